/*
 * Unit tests of the engine's pure parts: file names of tables, the option
 * parser shared by dtfs and dtfsctl, JSON string escaping.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "config.h"
#include "names.h"

static void roundtrip(const char *name, const char *want)
{
	char enc[512], dec[512];

	assert_int_equal(fs_name_encode(name, enc, sizeof(enc)), 0);
	assert_string_equal(enc, want);
	assert_int_equal(fs_name_decode(enc, dec, sizeof(dec)), 0);
	assert_string_equal(dec, name);
}

static void test_names_roundtrip(void **state)
{
	(void)state;
	roundtrip("Customers", "Customers");
	roundtrip("Holidays/2025", "Holidays%2F2025");
	roundtrip("100%", "100%25");
	roundtrip("a%2Fb", "a%252Fb");
	roundtrip(".", "%2E");
	roundtrip("..", "%2E%2E");
	roundtrip("...", "...");
	roundtrip("é ü", "é ü");
}

static void test_names_refuse_other_spellings(void **state)
{
	char dec[64];

	(void)state;
	/* exactly one file name per table */
	assert_int_equal(fs_name_decode("%41bc", dec, sizeof(dec)), -EINVAL);
	assert_int_equal(fs_name_decode("a%2fb", dec, sizeof(dec)), -EINVAL);
	assert_int_equal(fs_name_decode("bad%", dec, sizeof(dec)), -EINVAL);
	assert_int_equal(fs_name_decode("bad%G1", dec, sizeof(dec)), -EINVAL);
	assert_int_equal(fs_name_decode(".", dec, sizeof(dec)), -EINVAL);
}

/* issue 11 item 4: names that broke the listing */
static void test_names_hostile(void **state)
{
	char enc[64], dec[64];

	(void)state;
	roundtrip("", "%00");
	roundtrip("a\nb", "a%0Ab");
	roundtrip("tab\there", "tab%09here");
	roundtrip("del\x7f", "del%7F");
	roundtrip("\r", "%0D");
	assert_int_equal(fs_name_encode("", enc, sizeof(enc)), 0);
	assert_true(enc[0] != '\0');
	/* a NUL only as the whole empty name */
	assert_int_equal(fs_name_decode("%00x", dec, sizeof(dec)), -EINVAL);
	assert_int_equal(fs_name_decode("x%00", dec, sizeof(dec)), -EINVAL);
	assert_int_equal(fs_name_decode("a\nb", dec, sizeof(dec)), -EINVAL);
}

static void test_names_too_long(void **state)
{
	char name[300], enc[1024], small[4];

	(void)state;
	memset(name, 'x', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	assert_int_equal(fs_name_encode(name, enc, sizeof(enc)),
			 -ENAMETOOLONG);
	assert_int_equal(fs_name_encode("abcdef", small, sizeof(small)),
			 -ENAMETOOLONG);
}

static void test_json_string(void **state)
{
	char buf[64];
	size_t pos = 0;

	(void)state;
	assert_int_equal(fs_json_string(buf, sizeof(buf), &pos,
					"a\"b\\c\nd\x01"), 0);
	assert_string_equal(buf, "\"a\\\"b\\\\c\\nd\\u0001\"");
	pos = 0;
	assert_int_equal(fs_json_string(buf, 4, &pos, "abcdef"), -ENOSPC);
}

static void test_config_defaults_and_words(void **state)
{
	struct fs_config cfg;

	(void)state;
	setenv("XDG_CACHE_HOME", "/tmp/xdg-test", 1);
	assert_int_equal(fs_config_init(&cfg), 0);
	assert_string_equal(cfg.cache_dir, "/tmp/xdg-test/dtfs");
	assert_string_equal(cfg.api, "cursor");
	assert_int_equal(cfg.page_size, 1000);
	assert_int_equal(cfg.chunk_rows, 250);
	assert_int_equal(cfg.upload_workers, 4);
	assert_false(cfg.ro);

	assert_int_equal(fs_config_set(&cfg, "page_size=500"), 0);
	assert_int_equal(cfg.page_size, 500);
	assert_int_equal(fs_config_set(&cfg, "cache_size=2M"), 0);
	assert_int_equal(cfg.cache_size, 2u << 20);
	assert_int_equal(fs_config_set(&cfg, "ro"), 0);
	assert_true(cfg.ro);
	assert_int_equal(fs_config_set(&cfg, "api_url=http://127.0.0.1:1"),
			 0);
	assert_string_equal(cfg.api_url, "http://127.0.0.1:1");
	/* not ours: the mount passes it to FUSE */
	assert_int_equal(fs_config_set(&cfg, "allow_other"), 1);
	assert_int_equal(fs_config_set(&cfg, "max_read=4096"), 1);

	assert_int_equal(fs_config_set_list(&cfg, "chunk_rows=200,revalidate=0"),
			 0);
	assert_int_equal(cfg.chunk_rows, 200);
	assert_int_equal(cfg.revalidate, 0);
	fs_config_release(&cfg);
}

static void test_config_bad_values(void **state)
{
	struct fs_config cfg;

	(void)state;
	assert_int_equal(fs_config_init(&cfg), 0);
	assert_int_equal(fs_config_set(&cfg, "page_size=0"), -EINVAL);
	assert_int_equal(fs_config_set(&cfg, "page_size=1001"), -EINVAL);
	assert_int_equal(fs_config_set(&cfg, "page_size=12x"), -EINVAL);
	assert_int_equal(fs_config_set(&cfg, "chunk_rows=-1"), -EINVAL);
	assert_int_equal(fs_config_set(&cfg, "cache_size=3T"), -EINVAL);
	assert_int_equal(fs_config_set(&cfg, "api=soap"), -EINVAL);
	assert_int_equal(cfg.page_size, 1000);
	/* dtfsctl refuses words that are not dtfs options */
	assert_int_equal(fs_config_set_list(&cfg, "page_size=10,allow_other"),
			 -EINVAL);
	fs_config_release(&cfg);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_names_roundtrip),
		cmocka_unit_test(test_names_refuse_other_spellings),
		cmocka_unit_test(test_names_too_long),
		cmocka_unit_test(test_names_hostile),
		cmocka_unit_test(test_json_string),
		cmocka_unit_test(test_config_defaults_and_words),
		cmocka_unit_test(test_config_bad_values),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

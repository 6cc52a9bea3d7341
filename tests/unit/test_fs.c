/*
 * Unit tests of the engine's pure parts: file names of tables, the option
 * parser shared by dtfs and dtfsctl, JSON string escaping, the spool
 * values and keys of the import diff, the digest, the reordering of a
 * page fetched before its schema.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"
#include "engine_i.h"
#include "hash.h"
#include "names.h"
#include "scratch.h"

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
	assert_null(cfg.api);	/* chosen by fs_config_resolve() */
	assert_int_equal(cfg.page_size, 0);
	assert_int_equal(cfg.page_workers, 4);
	assert_int_equal(cfg.job_rows, FS_CONFIG_AUTO);
	assert_int_equal(cfg.chunk_rows, 250);
	assert_int_equal(cfg.upload_workers, 4);
	assert_false(cfg.ro);

	assert_int_equal(fs_config_set(&cfg, "page_size=500"), 0);
	assert_int_equal(cfg.page_size, 500);
	assert_int_equal(fs_config_set(&cfg, "cache_size=2M"), 0);
	assert_int_equal(cfg.cache_size, 2u << 20);
	assert_int_equal(fs_config_set(&cfg, "ro"), 0);
	assert_true(cfg.ro);
	assert_false(cfg.replace);
	assert_false(cfg.lazy_size);
	assert_int_equal(fs_config_set(&cfg, "replace"), 0);
	assert_int_equal(fs_config_set(&cfg, "lazy_size"), 0);
	assert_true(cfg.replace && cfg.lazy_size);
	/* flags take no value */
	assert_int_equal(fs_config_set(&cfg, "replace=1"), 1);
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
	assert_int_equal(fs_config_set(&cfg, "rate=300"), -EINVAL);
	assert_int_equal(fs_config_set(&cfg, "rate=0/60"), -EINVAL);
	assert_int_equal(fs_config_set(&cfg, "rate=10/0"), -EINVAL);
	assert_int_equal(fs_config_set(&cfg, "page_workers=0"), -EINVAL);
	assert_int_equal(fs_config_set(&cfg, "page_workers=33"), -EINVAL);
	assert_int_equal(fs_config_set(&cfg, "job_rows=0"), -EINVAL);
	assert_int_equal(fs_config_set(&cfg, "max_rows=-5"), -EINVAL);
	assert_int_equal(fs_config_set(&cfg, "max_line=65M"), -EINVAL);
	assert_int_equal(fs_config_set(&cfg, "max_line=63"), -EINVAL);
	assert_int_equal(fs_config_set(&cfg, "max_line=1X"), -EINVAL);
	/* issue 11 item 7: the default as --help writes it is accepted */
	assert_int_equal(fs_config_set(&cfg, "max_line=1M"), 0);
	assert_int_equal(cfg.max_line, 1U << 20);
	assert_int_equal(fs_config_set(&cfg, "max_line=64k"), 0);
	assert_int_equal(cfg.max_line, 64U << 10);
	assert_int_equal(fs_config_set(&cfg, "max_line=4096"), 0);
	assert_int_equal(cfg.max_line, 4096);
	assert_int_equal(cfg.page_size, 0);
	/* dtfsctl refuses words that are not dtfs options */
	assert_int_equal(fs_config_set_list(&cfg, "page_size=10,allow_other"),
			 -EINVAL);
	fs_config_release(&cfg);
}

/* The dialect rule of fs_config_resolve(), its defaults and its error. */
static void test_config_dialect_rule(void **state)
{
	struct fs_config cfg;

	(void)state;
	unsetenv("GENESYSCLOUD_REGION");
	/* nothing says where the org is: an error, never us-east-1 */
	assert_int_equal(fs_config_init(&cfg), 0);
	assert_int_equal(fs_config_resolve(&cfg), -EINVAL);
	fs_config_release(&cfg);

	/* a region alone is the production API, with its defaults */
	assert_int_equal(fs_config_init(&cfg), 0);
	assert_int_equal(fs_config_set(&cfg, "region=eu-west-1"), 0);
	assert_int_equal(fs_config_resolve(&cfg), 0);
	assert_string_equal(cfg.api, "flows");
	assert_int_equal(cfg.rate_requests, 300);
	assert_int_equal(cfg.rate_window, 60);
	assert_int_equal(cfg.max_rows, 5000);
	fs_config_release(&cfg);

	/* GENESYSCLOUD_REGION counts as region= */
	setenv("GENESYSCLOUD_REGION", "ap-southeast-2", 1);
	assert_int_equal(fs_config_init(&cfg), 0);
	assert_int_equal(fs_config_resolve(&cfg), 0);
	assert_string_equal(cfg.region, "ap-southeast-2");
	assert_string_equal(cfg.api, "flows");
	fs_config_release(&cfg);
	unsetenv("GENESYSCLOUD_REGION");

	/* a Genesys Cloud URL is the production API too */
	assert_int_equal(fs_config_init(&cfg), 0);
	assert_int_equal(fs_config_set(&cfg,
				       "api_url=https://api.euw2.pure.cloud"), 0);
	assert_int_equal(fs_config_resolve(&cfg), 0);
	assert_string_equal(cfg.api, "flows");
	fs_config_release(&cfg);

	/* any other URL is the guide's API, without a budget of ours */
	assert_int_equal(fs_config_init(&cfg), 0);
	assert_int_equal(fs_config_set(&cfg, "api_url=http://127.0.0.1:9"), 0);
	assert_int_equal(fs_config_resolve(&cfg), 0);
	assert_string_equal(cfg.api, "cursor");
	assert_int_equal(cfg.rate_requests, 0);
	assert_int_equal(cfg.max_rows, 0);
	fs_config_release(&cfg);

	/* api= wins; rate= and max_rows= given win over the defaults */
	assert_int_equal(fs_config_init(&cfg), 0);
	assert_int_equal(fs_config_set_list(&cfg,
		"api_url=http://127.0.0.1:9,api=flows,rate=20/2,max_rows=0"), 0);
	assert_int_equal(fs_config_resolve(&cfg), 0);
	assert_string_equal(cfg.api, "flows");
	assert_int_equal(cfg.rate_requests, 20);
	assert_int_equal(cfg.rate_window, 2);
	assert_int_equal(cfg.max_rows, 0);
	assert_int_equal(fs_config_set(&cfg, "rate=none"), 0);
	assert_int_equal(cfg.rate_requests, 0);
	assert_int_equal(fs_config_set(&cfg, "job_rows=auto"), 0);
	assert_int_equal(cfg.job_rows, FS_CONFIG_AUTO);
	fs_config_release(&cfg);
}

static void test_spooled_values(void **state)
{
	struct fs_spooled sp;
	char *v;

	(void)state;
	v = fs_spooled_format(42, 'u', "[\"a\\tb\"]", "{\"key\":\"a\\tb\"}");
	assert_non_null(v);
	assert_int_equal(fs_spooled_parse(v, &sp), 0);
	assert_int_equal(sp.line, 42);
	assert_int_equal(sp.flag, 'u');
	assert_int_equal(sp.klen, strlen("[\"a\\tb\"]"));
	assert_memory_equal(sp.key, "[\"a\\tb\"]", sp.klen);
	assert_string_equal(sp.row, "{\"key\":\"a\\tb\"}");
	free(v);
	assert_int_equal(fs_spooled_parse("x\tu\tk\tr", &sp), -EPROTO);
	assert_int_equal(fs_spooled_parse("1\tuu\tk\tr", &sp), -EPROTO);
	assert_int_equal(fs_spooled_parse("1\tu\tnorow", &sp), -EPROTO);
}

static void test_hash(void **state)
{
	char hex[17];
	uint64_t h;

	(void)state;
	/* FNV-1a 64 test vectors */
	assert_true(hash_add(HASH_INIT, "", 0) == UINT64_C(0xcbf29ce484222325));
	assert_true(hash_add(HASH_INIT, "a", 1) == UINT64_C(0xaf63dc4c8601ec8c));
	/* fed in pieces, the same digest */
	h = hash_add(hash_add(HASH_INIT, "foo", 3), "bar", 3);
	assert_true(h == hash_add(HASH_INIT, "foobar", 6));
	hash_hex(UINT64_C(0x85944171f73967e8), hex);
	assert_string_equal(hex, "85944171f73967e8");
}

static void test_page_reorder(void **state)
{
	static const char schema_json[] =
		"{\"columns\":["
		"{\"name\":\"id\",\"type\":\"string\","
		"\"isPrimaryKey\":true},"
		"{\"name\":\"n\",\"type\":\"number\"},"
		"{\"name\":\"b\",\"type\":\"boolean\"}]}\n";
	struct api_schema schema = { 0 };
	struct api_page p = { 0 };

	(void)state;
	assert_int_equal(api_schema_parse(schema_json, strlen(schema_json),
					  NULL, &schema), 0);
	p.data = strdup("{\"b\":true,\"n\":1.50,\"id\":\"x\"}\n"
			"{\"id\":\"y\",\"n\":2}\n");
	p.len = strlen(p.data);
	assert_int_equal(fs_page_reorder(&schema, &p), 0);
	assert_string_equal(p.data, "{\"id\":\"x\",\"n\":1.50,\"b\":true}\n"
				    "{\"id\":\"y\",\"n\":2}\n");
	assert_int_equal(p.len, strlen(p.data));
	free(p.data);
	/* a line the schema cannot read: the caller fetches again */
	p.data = strdup("{\"id\":\"x\",\"extra\":1}\n");
	p.len = strlen(p.data);
	assert_int_equal(fs_page_reorder(&schema, &p), -EINVAL);
	assert_string_equal(p.data, "{\"id\":\"x\",\"extra\":1}\n");
	free(p.data);
	api_schema_release(&schema);
}

static int count_name(void *arg, const char *name)
{
	(void)name;
	(*(int *)arg)++;
	return 0;
}

/* Scratch files: names, data on disk, references that outlive a name. */
static void test_scratch(void **state)
{
	char dir[] = "/tmp/dtfs-test-scratch-XXXXXX", sub[64], buf[16];
	struct fs_scratch_set *set = NULL;
	struct fs_scratch *a = NULL, *b = NULL, *c = NULL;
	struct stat st;
	int n = 0;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(sub, sizeof(sub), "%s/scratch", dir);
	assert_int_equal(fs_scratch_set_new(sub, &set), 0);
	assert_int_equal(fs_scratch_get(set, "T1", "x", &a), -ENOENT);
	assert_int_equal(fs_scratch_create(set, "T1", "x", 0640, true, &a), 0);
	assert_int_equal(fs_scratch_create(set, "T1", "x", 0600, true, &b),
			 -EEXIST);
	assert_int_equal(pwrite(fs_scratch_fd(a), "hello", 5, 0), 5);
	assert_int_equal(fs_scratch_stat(a, &st), 0);
	assert_int_equal(st.st_size, 5);
	assert_int_equal(st.st_mode, S_IFREG | 0640);
	fs_scratch_chmod(a, 0600);
	assert_int_equal(fs_scratch_stat(a, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);

	/* the same name in another directory is another file */
	assert_int_equal(fs_scratch_create(set, "T2", "x", 0600, true, &b), 0);
	assert_int_equal(fs_scratch_stat(b, &st), 0);
	assert_int_equal(st.st_size, 0);

	/* rename over an existing name; the old one stays readable by its
	 * holder, the new name holds the data */
	assert_int_equal(fs_scratch_create(set, "T1", "y", 0600, true, &c), 0);
	assert_int_equal(fs_scratch_rename(set, "T1", "x", "y", true),
			 -EEXIST);
	assert_int_equal(fs_scratch_rename(set, "T1", "x", "y", false), 0);
	assert_int_equal(fs_scratch_get(set, "T1", "x", &b), -ENOENT);
	fs_scratch_put(b);
	b = NULL;
	assert_int_equal(fs_scratch_get(set, "T1", "y", &b), 0);
	assert_ptr_equal(b, a);
	assert_int_equal(pread(fs_scratch_fd(b), buf, sizeof(buf), 0), 5);
	assert_int_equal(fs_scratch_stat(c, &st), 0);
	assert_int_equal(st.st_nlink, 0);	/* replaced: no name */
	fs_scratch_put(c);
	fs_scratch_put(b);

	/* unlink: gone from the list, the holder still reads */
	assert_int_equal(fs_scratch_unlink(set, "T1", "y"), 0);
	assert_int_equal(fs_scratch_unlink(set, "T1", "y"), -ENOENT);
	assert_int_equal(pread(fs_scratch_fd(a), buf, sizeof(buf), 0), 5);
	fs_scratch_put(a);

	/* detach after an import; listing sees only linked names */
	assert_int_equal(fs_scratch_create(set, "T1", "z", 0600, false, &a), 0);
	fs_scratch_detach(a);
	fs_scratch_put(a);
	fs_scratch_list(set, "T1", count_name, &n);
	assert_int_equal(n, 0);
	fs_scratch_list(set, "T2", count_name, &n);
	assert_int_equal(n, 1);
	fs_scratch_set_free(set);
	rmdir(sub);
	rmdir(dir);
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
		cmocka_unit_test(test_config_dialect_rule),
		cmocka_unit_test(test_spooled_values),
		cmocka_unit_test(test_hash),
		cmocka_unit_test(test_page_reorder),
		cmocka_unit_test(test_scratch),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}

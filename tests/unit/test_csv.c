/*
 * Unit tests of api/csv.c (RFC 4180 to and from JSONL rows) and of the
 * production dialect's schema rules in row validation: exact bytes for
 * awkward text, strict refusal of damaged CSV (with the line number in the
 * log), and random round trips.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "api.h"
#include "log.h"

/* key has displayOrder 3 yet comes first; props in displayOrder */
static const char FLOWS_SCHEMA[] =
    "{\"$schema\": \"http://json-schema.org/draft-04/schema#\","
    " \"type\": \"object\", \"required\": [\"key\"],"
    " \"additionalProperties\": false, \"properties\": {"
    "  \"visits\": {\"$id\": \"/properties/visits\", \"type\": \"integer\","
    "   \"displayOrder\": 2},"
    "  \"key\": {\"$id\": \"/properties/key\", \"type\": \"string\","
    "   \"title\": \"Email\", \"displayOrder\": 3},"
    "  \"score\": {\"type\": \"number\", \"displayOrder\": 1,"
    "   \"default\": 0.5},"
    "  \"deleted\": {\"type\": \"boolean\", \"displayOrder\": 4},"
    "  \"note\": {\"type\": \"string\", \"displayOrder\": 0}}}";

static void load(struct api_schema *s)
{
	assert_int_equal(
	    api_schema_parse(FLOWS_SCHEMA, strlen(FLOWS_SCHEMA), NULL, s), 0);
}

static void test_flows_schema_order(void **state)
{
	struct api_schema s;
	static const char *const want[] = {"key", "note", "score", "visits",
					   "deleted"};

	(void)state;
	load(&s);
	assert_int_equal(s.ncolumns, 5);
	for (size_t i = 0; i < 5; i++)
		assert_string_equal(s.columns[i].name, want[i]);
	assert_true(s.columns[0].key);
	assert_int_equal(s.columns[0].min_chars, 1);
	assert_int_equal(s.columns[0].max_chars, 256);
	assert_int_equal(s.columns[1].max_chars, 0);
	api_schema_release(&s);

	/* a key that is not a string is not a production schema */
	const char *bad = "{\"properties\": {\"key\": {\"type\": "
			  "\"integer\"}}}";
	assert_int_equal(api_schema_parse(bad, strlen(bad), NULL, &s), -EPROTO);
}

static int validate(const struct api_schema *s, const char *line, char **row,
		    char **err)
{
	char *key = NULL;
	int rc = api_row_validate(s, line, strlen(line), row, &key, err);

	free(key);
	return rc;
}

static void test_flows_validate(void **state)
{
	struct api_schema s;
	char *row, *err, line[1200], *p;

	(void)state;
	load(&s);
	/* key first, properties in displayOrder, text kept */
	assert_int_equal(validate(&s,
				  "{\"deleted\": false, \"visits\": 7, "
				  "\"score\": 1.50, \"key\": \"a@b\"}",
				  &row, &err),
			 0);
	assert_string_equal(row, "{\"key\":\"a@b\",\"score\":1.50,"
				 "\"visits\":7,\"deleted\":false}");
	free(row);
	/* the key: a string of 1 to 256 characters (not bytes) */
	assert_int_equal(validate(&s, "{\"key\": \"\"}", &row, &err), -EINVAL);
	assert_non_null(
	    strstr(err, "key: expected 1 to 256 characters, got 0"));
	free(err);
	assert_int_equal(validate(&s, "{\"key\": 5}", &row, &err), -EINVAL);
	assert_non_null(strstr(err, "key: expected string, got number"));
	free(err);
	assert_int_equal(validate(&s, "{\"note\": \"x\"}", &row, &err),
			 -EINVAL);
	assert_non_null(strstr(err, "missing key"));
	free(err);
	p = line + snprintf(line, sizeof(line), "{\"key\": \"");
	for (int i = 0; i < 256; i++) { /* 256 two-byte characters */
		*p++ = '\xc3';
		*p++ = '\xa9';
	}
	snprintf(p, 4, "\"}");
	assert_int_equal(validate(&s, line, &row, &err), 0);
	free(row);
	snprintf(p, 8, "\xc3\xa9\"}");
	assert_int_equal(validate(&s, line, &row, &err), -EINVAL);
	assert_non_null(strstr(err, "got 257"));
	free(err);
	/* an escaped character counts once */
	assert_int_equal(validate(&s, "{\"key\": \"\\u00e9\"}", &row, &err), 0);
	free(row);
	/* integer: integral, no fraction or exponent */
	assert_int_equal(
	    validate(&s, "{\"key\": \"k\", \"visits\": 1.0}", &row, &err),
	    -EINVAL);
	assert_non_null(strstr(err, "visits: expected integer"));
	free(err);
	/* an unknown property is schema drift */
	assert_int_equal(
	    validate(&s, "{\"key\": \"k\", \"segment\": 1}", &row, &err),
	    -ENOENT);
	assert_non_null(strstr(err, "unknown column 'segment'"));
	free(err);
	api_schema_release(&s);
}

/* ---- CSV -------------------------------------------------------------- */

static void expect_csv(const struct api_schema *s, const char *csv,
		       const char *want)
{
	char *out = NULL;
	size_t len = 0;
	int rc = api_csv_to_jsonl(s, csv, strlen(csv), &out, &len);

	if (rc)
		fail_msg("CSV refused (%d): %s", rc, csv);
	assert_int_equal(len, strlen(want));
	assert_string_equal(out, want);
	free(out);
}

static char *captured;

static void expect_csv_error(const struct api_schema *s, const char *csv,
			     const char *msg_part)
{
	size_t len = strlen(csv);
	char *out = (char *)1, path[] = "/tmp/test_csv_XXXXXX";
	size_t olen = 1;
	int fd = mkstemp(path), saved = dup(2), rc;
	FILE *f;

	assert_true(fd >= 0);
	fflush(stderr);
	dup2(fd, 2);
	rc = api_csv_to_jsonl(s, csv, len, &out, &olen);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	f = fdopen(fd, "r");
	fseek(f, 0, SEEK_SET);
	captured = calloc(1, 4096);
	if (fread(captured, 1, 4095, f) == 0)
		captured[0] = '\0';
	fclose(f);
	unlink(path);
	if (rc != -EINVAL)
		fail_msg("CSV accepted (%d): %.*s", rc, (int)len, csv);
	assert_null(out);
	assert_int_equal(olen, 0);
	if (!strstr(captured, msg_part))
		fail_msg("log '%s' lacks '%s'", captured, msg_part);
	free(captured);
}

static void test_csv_read(void **state)
{
	struct api_schema s;

	(void)state;
	load(&s);
	/* BOM, CRLF, quoted commas, quotes and newlines, header in any
	 * order, booleans in any case, numbers' text kept, last line
	 * without a line end */
	expect_csv(&s,
		   "\xef\xbb\xbfvisits,key,note,score,deleted\r\n"
		   "3,\"a,b\",\"say \"\"hi\"\"\r\nbye\",1.50,TRUE\r\n"
		   "-0,b,,1e3,false\r\n"
		   ",\"c\",\"\",,\n"
		   "12345678901234567890,d,\xc3\xa9 \xe2\x82\xac,-0.0,False",
		   "{\"key\":\"a,b\",\"note\":\"say \\\"hi\\\"\\r\\nbye\","
		   "\"score\":1.50,\"visits\":3,\"deleted\":true}\n"
		   "{\"key\":\"b\",\"note\":\"\",\"score\":1e3,\"visits\":-0,"
		   "\"deleted\":false}\n"
		   "{\"key\":\"c\",\"note\":\"\"}\n"
		   "{\"key\":\"d\",\"note\":\"\xc3\xa9 \xe2\x82\xac\","
		   "\"score\":-0.0,\"visits\":12345678901234567890,"
		   "\"deleted\":false}\n");
	/* LF only, a header of the key alone, no rows */
	expect_csv(&s, "key\nx\n", "{\"key\":\"x\"}\n");
	expect_csv(&s, "key,note\n", "");
	expect_csv(&s, "key", "");
	/* control characters and JSON specials are escaped in the JSONL */
	expect_csv(&s, "key,note\nk,\"a\\b/\tc\"\n",
		   "{\"key\":\"k\",\"note\":\"a\\\\b/\\tc\"}\n");

	expect_csv_error(&s, "", "no header row");
	expect_csv_error(&s, "\xef\xbb\xbf", "no header row");
	expect_csv_error(&s, "note\nx\n", "no key column 'key'");
	expect_csv_error(&s, "key,segment\n", "unknown column 'segment'");
	expect_csv_error(&s, "key,key\n", "repeated column 'key'");
	expect_csv_error(&s, "key,note\na\n",
			 "line 2: 1 field, the "
			 "header has 2");
	expect_csv_error(&s, "key\na,b\n", "line 2: more fields");
	expect_csv_error(&s, "key,note\na,\"open\n\nstill",
			 "line 2: a quoted field is never closed");
	expect_csv_error(&s, "key,note\na,b\"c\n",
			 "line 2: a quote inside an unquoted field");
	expect_csv_error(&s, "key,note\na,\"b\"c\n",
			 "line 2: text after a closing quote");
	expect_csv_error(&s, "key,note\na,\"b\" \n",
			 "text after a closing quote");
	expect_csv_error(&s, "key,note\ra,b\r",
			 "line 1: a carriage return without a line feed");
	expect_csv_error(&s, "key,note\n\"x\ny\",b\nc,d\xff\n",
			 "line 4: not UTF-8");
	expect_csv_error(&s, "key,visits\na,1.5\n",
			 "line 2: visits: not an integer");
	expect_csv_error(&s, "key,visits\na,1e2\n", "not an integer");
	expect_csv_error(&s, "key,score\na,+1\n", "score: not a number");
	expect_csv_error(&s, "key,score\na, 1\n", "not a number");
	expect_csv_error(&s, "key,score\na,01\n", "not a number");
	expect_csv_error(&s, "key,score\na,1.\n", "not a number");
	expect_csv_error(&s, "key,deleted\na,yes\n",
			 "deleted: not true or false");
	/* a line number counts the newlines inside quoted fields */
	expect_csv_error(&s, "key,note\n\"a\nb\",x\nc\n", "line 4: 1 field");
	/* a NUL byte is data, not the end */
	expect_csv(&s, "key,note\nk,x", "{\"key\":\"k\",\"note\":\"x\"}\n");
	{
		static const char nul[] = "key,note\nk,a\0b\n";
		char *out;
		size_t len;

		assert_int_equal(
		    api_csv_to_jsonl(&s, nul, sizeof(nul) - 1, &out, &len), 0);
		assert_string_equal(out,
				    "{\"key\":\"k\",\"note\":\"a\\u0000b\"}\n");
		free(out);
	}
	api_schema_release(&s);
}

static void test_csv_write(void **state)
{
	struct api_schema s;
	const char *rows[] = {
	    "{\"key\":\"plain\",\"note\":\"a b\",\"score\":1.50,\"visits\":-0,"
	    "\"deleted\":true}",
	    "{\"key\":\"a,b\",\"note\":\"say \\\"hi\\\"\\r\\nbye\"}",
	    "{\"key\":\" lead\",\"note\":\"\",\"score\":null,"
	    "\"deleted\":false}",
	    "{\"note\":\"\\u00e9\\t\",\"key\":\"trail \"}",
	};
	size_t lens[4];
	char *csv = NULL, *jsonl;
	size_t len = 0, jlen;
	const char *want = "key,note,score,visits,deleted\r\n"
			   "plain,a b,1.50,-0,true\r\n"
			   "\"a,b\",\"say \"\"hi\"\"\r\nbye\",,,\r\n"
			   "\" lead\",\"\",,,false\r\n"
			   "\"trail \",\"\xc3\xa9\t\",,,\r\n";

	(void)state;
	load(&s);
	for (size_t i = 0; i < 4; i++)
		lens[i] = strlen(rows[i]);
	assert_int_equal(api_csv_encode(&s, rows, lens, 4, &csv, &len), 0);
	assert_int_equal(len, strlen(want));
	assert_string_equal(csv, want);
	/* and back: strings exact, a null number left out */
	assert_int_equal(api_csv_to_jsonl(&s, csv, len, &jsonl, &jlen), 0);
	assert_string_equal(
	    jsonl,
	    "{\"key\":\"plain\",\"note\":\"a b\",\"score\":1.50,\"visits\":-0,"
	    "\"deleted\":true}\n"
	    "{\"key\":\"a,b\",\"note\":\"say \\\"hi\\\"\\r\\nbye\"}\n"
	    "{\"key\":\" lead\",\"note\":\"\",\"deleted\":false}\n"
	    "{\"key\":\"trail \",\"note\":\"\xc3\xa9\\t\"}\n");
	free(jsonl);
	/* appending a chunk adds records, no second header */
	assert_int_equal(api_csv_encode(&s, rows, lens, 1, &csv, &len), 0);
	assert_int_equal(len,
			 strlen(want) + strlen("plain,a b,1.50,-0,true\r\n"));
	assert_string_equal(csv + strlen(want), "plain,a b,1.50,-0,true\r\n");
	/* refusals leave the buffer as it was */
	{
		const char *bad[] = {"{\"key\":\"k\",\"extra\":1}",
				     "{\"key\":\"k\",\"note\":[1]}", "[1]",
				     "{\"key\":"};
		size_t before = len;

		for (size_t i = 0; i < 4; i++) {
			size_t bl = strlen(bad[i]);

			assert_int_equal(
			    api_csv_encode(&s, &bad[i], &bl, 1, &csv, &len),
			    -EINVAL);
			assert_int_equal(len, before);
		}
	}
	free(csv);
	api_schema_release(&s);
}

/* Random strings of awkward characters survive encode + decode. */
static void test_csv_round_trip_random(void **state)
{
	static const char *const atoms[] = {
	    "a",
	    ",",
	    "\"",
	    "\r\n",
	    "\n",
	    "\r",
	    " ",
	    "\t",
	    "\xc3\xa9",
	    "\xe2\x82\xac",
	    "\xf0\x9f\x98\x80",
	    "\\",
	    "/",
	    "\x01",
	    "key",
	    "''",
	};
	struct api_schema s;
	uint64_t seed = 0x9e3779b97f4a7c15ULL;

	(void)state;
	load(&s);
	for (int iter = 0; iter < 300; iter++) {
		char *rows[8], *csv = NULL, *jsonl, *want = NULL;
		size_t lens[8], len = 0, jlen, wlen = 0;
		unsigned nrows = 1 + iter % 8;
		FILE *wf = open_memstream(&want, &wlen);

		for (unsigned r = 0; r < nrows; r++) {
			char text[2][256];

			for (int f = 0; f < 2; f++) {
				size_t n = 0;
				unsigned natoms;

				seed ^= seed << 13;
				seed ^= seed >> 7;
				seed ^= seed << 17;
				natoms = (unsigned)(seed % 12) + (f == 0);
				for (unsigned a = 0; a < natoms; a++) {
					const char *at =
					    atoms[(seed >> (4 * a)) % 16];

					memcpy(text[f] + n, at, strlen(at));
					n += strlen(at);
				}
				text[f][n] = '\0';
			}
			/* JSON-escape both via the validator's canonical
			 * form: build a line by hand */
			{
				char line[2048];
				size_t o = 0;

				o += (size_t)snprintf(
				    line + o, sizeof(line) - o, "{\"key\":\"");
				for (int f = 0; f < 2; f++) {
					for (const char *c = text[f]; *c; c++) {
						unsigned char u =
						    (unsigned char)*c;

						if (u == '"' || u == '\\')
							o += (size_t)snprintf(
							    line + o,
							    sizeof(line) - o,
							    "\\%c", u);
						else if (u < 0x20)
							o += (size_t)snprintf(
							    line + o,
							    sizeof(line) - o,
							    "\\u%04x", u);
						else
							line[o++] = (char)u;
					}
					o += (size_t)snprintf(
					    line + o, sizeof(line) - o,
					    f == 0 ? "\",\"note\":\"" : "\"}");
				}
				line[o] = '\0';
				rows[r] = NULL;
				{
					char *key, *err;

					assert_int_equal(
					    api_row_validate(&s, line, o,
							     &rows[r], &key,
							     &err),
					    0);
					free(key);
				}
				lens[r] = strlen(rows[r]);
				fprintf(wf, "%s\n", rows[r]);
			}
		}
		fclose(wf);
		assert_int_equal(api_csv_encode(&s, (const char *const *)rows,
						lens, nrows, &csv, &len),
				 0);
		assert_int_equal(api_csv_to_jsonl(&s, csv, len, &jsonl, &jlen),
				 0);
		if (jlen != wlen || memcmp(jsonl, want, wlen))
			fail_msg("round trip differs:\n%s---\n%s", want, jsonl);
		/* rows.csv's way from the same lines: the same records */
		{
			char *lcsv = NULL;
			size_t llen = 0, lcap = 0;
			const char *rec = strstr(csv, "\r\n") + 2;

			assert_int_equal(api_csv_encode_lines(&s, want, wlen,
							      &lcsv, &llen,
							      &lcap),
					 0);
			assert_int_equal(llen, strlen(rec));
			assert_memory_equal(lcsv, rec, llen);
			free(lcsv);
		}
		free(jsonl);
		free(csv);
		free(want);
		for (unsigned r = 0; r < nrows; r++)
			free(rows[r]);
	}
	api_schema_release(&s);
}


/* ---- the streaming reader ---------------------------------------------- */

struct collected {
	char out[4096];
	size_t len;
};

static int collect(void *arg, const struct api_csv_record *rec)
{
	struct collected *c = arg;
	int n;

	if (rec->error)
		n = snprintf(c->out + c->len, sizeof(c->out) - c->len,
			     "#%llu@%llu %s [%.*s]\n",
			     (unsigned long long)rec->record,
			     (unsigned long long)rec->line, rec->error,
			     (int)rec->text_len, rec->text);
	else
		n = snprintf(c->out + c->len, sizeof(c->out) - c->len,
			     "#%llu %.*s\n", (unsigned long long)rec->record,
			     (int)rec->row_len, rec->row);
	assert_true(n > 0 && (size_t)n < sizeof(c->out) - c->len);
	c->len += (size_t)n;
	return 0;
}

/* Feed csv in pieces of `step` bytes; returns the result of _end. */
static int stream(const struct api_schema *s, const char *csv, size_t step,
		  int flags, size_t max, struct collected *c)
{
	struct api_csv_reader *r;
	size_t len = strlen(csv);
	int rc = 0;

	memset(c, 0, sizeof(*c));
	assert_int_equal(api_csv_reader_new(s, max, flags, &r), 0);
	for (size_t i = 0; i < len && !rc; i += step)
		rc = api_csv_reader_feed(r, csv + i,
					 len - i < step ? len - i : step,
					 collect, c);
	if (!rc)
		rc = api_csv_reader_end(r, collect, c);
	api_csv_reader_free(r);
	return rc;
}

static void test_csv_stream(void **state)
{
	static const char csv[] =
	    "\xef\xbb\xbfkey,score,note\r\n"
	    "a,\"3\",\"x,\r\ny\"\r\n"
	    "b,gold,z\r\n"
	    "\r\n"
	    "c,1,\"never\"closed\"\n"
	    "d,2\n"
	    "e,1e2,\n"
	    "f,,\"\"";
	static const char want[] =
	    "#1 {\"key\":\"a\",\"note\":\"x,\\r\\ny\",\"score\":3}\n"
	    "#2@4 line 4: score: not a number [b,gold,z]\n"
	    "#3@6 line 6: text after a closing quote "
	    "[c,1,\"never\"closed\"]\n"
	    "#4@7 line 7: 2 fields, the header has 3 [d,2]\n"
	    "#5 {\"key\":\"e\",\"note\":\"\",\"score\":1e2}\n"
	    "#6 {\"key\":\"f\",\"note\":\"\"}\n";
	struct api_schema s;
	struct collected c;

	(void)state;
	load(&s);
	/* any split of the bytes gives the same records */
	for (size_t step = 1; step <= sizeof(csv); step++) {
		assert_int_equal(stream(&s, csv, step, 0, 0, &c), 0);
		assert_string_equal(c.out, want);
	}
	/* cursor: an unquoted empty field is no value, "" is "" */
	assert_int_equal(stream(&s, "key,note\nx,\ny,\"\"\n", 3,
				API_CSV_EMPTY_ABSENT, 0, &c), 0);
	assert_string_equal(c.out, "#1 {\"key\":\"x\"}\n"
				   "#2 {\"key\":\"y\",\"note\":\"\"}\n");
	/* an overlong record is refused on its own, the next one read */
	assert_int_equal(stream(&s, "key,note\nx,0123456789abcdef\ny,z\n", 2,
				0, 12, &c), 0);
	assert_string_equal(c.out, "#1@2 line 2: a record longer than 12 "
				   "bytes [x,0123456789]\n"
				   "#2 {\"key\":\"y\",\"note\":\"z\"}\n");
	/* an unclosed quote takes the rest, and is one refused record */
	assert_int_equal(stream(&s, "key,note\nx,\"a\nb,c\n", 4, 0, 0, &c), 0);
	assert_string_equal(c.out, "#1@2 line 2: a quoted field is never "
				   "closed [x,\"a\nb,c\n]\n");
	/* the header: drift is -ENOENT, other faults -EINVAL, latched */
	{
		struct api_csv_reader *r;

		assert_int_equal(api_csv_reader_new(&s, 0, 0, &r), 0);
		assert_int_equal(api_csv_reader_feed(r, "key,seg", 7, collect,
						     &c),
				 0);
		assert_int_equal(api_csv_reader_feed(r, "ment\nx,y\n", 9,
						     collect, &c),
				 -ENOENT);
		assert_non_null(strstr(api_csv_reader_error(r),
				       "unknown column 'segment'"));
		assert_int_equal(api_csv_reader_feed(r, "a\n", 2, collect, &c),
				 -ENOENT);
		api_csv_reader_free(r);
	}
	assert_int_equal(stream(&s, "note\nx\n", 1, 0, 0, &c), -EINVAL);
	assert_int_equal(stream(&s, "\n\r\n", 1, 0, 0, &c), -EINVAL);
	api_schema_release(&s);
}

/* api_csv_encode_lines (rows.csv's path, fast for canonical lines) writes
 * exactly what api_csv_encode writes, for lines of every shape. */
static void test_csv_encode_lines(void **state)
{
	static const char *const lines[] = {
	    "{\"key\":\"a\",\"note\":\"plain\",\"score\":1.50,\"visits\":3,"
	    "\"deleted\":true}",
	    "{\"key\":\"b\"}",
	    "{}",
	    "{\"key\":\"c\",\"visits\":-0,\"deleted\":null}",
	    "{\"key\":\"d\",\"note\":\"\"}",
	    "{\"key\":\"e\",\"note\":\" lead\"}",
	    "{\"key\":\"f\",\"note\":\"trail\\t\"}",
	    "{\"key\":\"g\",\"note\":\"a,b\"}",
	    "{\"key\":\"h\",\"note\":\"say \\\"hi\\\"\\r\\nbye\"}",
	    "{\"key\":\"i\",\"note\":\"\\u00e9\\/x\"}",
	    "{\"key\":\"j\",\"note\":\"caf\xc3\xa9 \xe2\x98\x95\"}",
	    /* keys out of schema order: the general way */
	    "{\"deleted\":false,\"key\":\"k\",\"score\":2}",
	    /* spaces: not compact, the general way */
	    "{ \"key\" : \"l\" , \"score\" : 3 }",
	    "{\"key\":\"m\",\"score\":1e3,\"deleted\":false}",
	};
	size_t n = sizeof(lines) / sizeof(lines[0]), lens[32], jl = 0;
	char jsonl[4096], *want = NULL, *got = NULL;
	size_t wlen = 0, glen = 0, gcap = 0;
	struct api_schema s;

	(void)state;
	load(&s);
	for (size_t i = 0; i < n; i++) {
		lens[i] = strlen(lines[i]);
		memcpy(jsonl + jl, lines[i], lens[i]);
		jl += lens[i];
		jsonl[jl++] = '\n';
	}
	/* the reference: header, then the records */
	assert_int_equal(api_csv_encode(&s, lines, lens, n, &want, &wlen), 0);
	/* blank lines skipped; a last line without its newline taken */
	assert_int_equal(api_csv_encode_lines(&s, "\n", 1, &got, &glen, &gcap),
			 0);
	assert_int_equal(glen, 0);
	assert_int_equal(
	    api_csv_encode_lines(&s, jsonl, jl - 1, &got, &glen, &gcap), 0);
	{
		const char *records = strstr(want, "\r\n") + 2;

		assert_int_equal(glen, strlen(records));
		assert_memory_equal(got, records, glen);
	}
	/* appended, in pieces of whole lines */
	glen = 0;
	for (size_t i = 0, at = 0; i < n; at += lens[i] + 1, i++)
		assert_int_equal(api_csv_encode_lines(&s, jsonl + at,
						      lens[i] + 1, &got, &glen,
						      &gcap),
				 0);
	assert_string_equal(got, strstr(want, "\r\n") + 2);
	/* a column the schema lacks, or a nested value: refused */
	glen = 0;
	{
		static const char seg[] = "{\"key\":\"x\",\"seg\":1}";
		static const char arr[] = "{\"key\":\"x\",\"note\":[1]}";

		assert_int_equal(api_csv_encode_lines(&s, seg, strlen(seg),
						      &got, &glen, &gcap),
				 -EINVAL);
		assert_int_equal(api_csv_encode_lines(&s, arr, strlen(arr),
						      &got, &glen, &gcap),
				 -EINVAL);
	}
	free(got);
	free(want);
	api_schema_release(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_flows_schema_order),
	    cmocka_unit_test(test_flows_validate),
	    cmocka_unit_test(test_csv_read),
	    cmocka_unit_test(test_csv_write),
	    cmocka_unit_test(test_csv_stream),
	    cmocka_unit_test(test_csv_encode_lines),
	    cmocka_unit_test(test_csv_round_trip_random),
	};

	log_init("test_csv", LOG_ERR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}

/* libFuzzer harness: the CSV reader; every line it writes must be a row
 * the import validator accepts (the CSV reader types values by the
 * schema). The streaming reader fed in pieces must hand over the same
 * records as fed whole, and rows.csv's encoder (api_csv_encode_lines)
 * must write what api_csv_encode writes for the same rows. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct seen {
	char *buf;
	size_t len, cap;
};

static int keep(void *arg, const struct api_csv_record *rec)
{
	struct seen *sn = arg;
	size_t need = sn->len + rec->text_len + rec->row_len + 64 +
		      (rec->error ? strlen(rec->error) : 0);

	if (need > sn->cap) {
		sn->cap = need * 2;
		sn->buf = realloc(sn->buf, sn->cap);
		if (!sn->buf)
			abort();
	}
	sn->len += (size_t)snprintf(sn->buf + sn->len, sn->cap - sn->len,
				    "%llu %llu %s|",
				    (unsigned long long)rec->record,
				    (unsigned long long)rec->line,
				    rec->error ? rec->error : "");
	memcpy(sn->buf + sn->len, rec->text, rec->text_len);
	sn->len += rec->text_len;
	if (rec->row) {
		memcpy(sn->buf + sn->len, rec->row, rec->row_len);
		sn->len += rec->row_len;
	}
	sn->buf[sn->len++] = '\n';
	return 0;
}

/* The records and the result of reading data in pieces of `step`. */
static int stream(const struct api_schema *s, const uint8_t *data,
		  size_t size, size_t step, struct seen *sn)
{
	struct api_csv_reader *r;
	int rc = 0;

	if (api_csv_reader_new(s, 64, 0, &r))
		abort();
	for (size_t i = 0; i < size && !rc; i += step)
		rc = api_csv_reader_feed(r, (const char *)data + i,
					 size - i < step ? size - i : step,
					 keep, sn);
	if (!rc)
		rc = api_csv_reader_end(r, keep, sn);
	api_csv_reader_free(r);
	return rc;
}

static void check_stream(const struct api_schema *s, const uint8_t *data,
			 size_t size)
{
	struct seen whole = {0}, parts = {0};
	size_t step = size ? 1 + data[0] % 7 : 1;
	int a = stream(s, data, size, size ? size : 1, &whole);
	int b = stream(s, data, size, step, &parts);

	if (a != b || whole.len != parts.len ||
	    (whole.len && memcmp(whole.buf, parts.buf, whole.len)))
		abort();
	free(whole.buf);
	free(parts.buf);
}

/* jsonl's lines through both encoders: the same records. */
static void check_encoders(const struct api_schema *s, const char *jsonl,
			   size_t len)
{
	const char **rows = NULL;
	size_t *lens = NULL, n = 0, elen = 0, llen = 0, lcap = 0;
	char *enc = NULL, *lines = NULL;
	const char *rec;

	for (size_t at = 0; at < len;) {
		const char *nl = memchr(jsonl + at, '\n', len - at);
		size_t k = nl ? (size_t)(nl - jsonl) - at : len - at;

		rows = realloc(rows, (n + 1) * sizeof(*rows));
		lens = realloc(lens, (n + 1) * sizeof(*lens));
		if (!rows || !lens)
			abort();
		rows[n] = jsonl + at;
		lens[n++] = k;
		at += k + 1;
	}
	if (api_csv_encode(s, rows, lens, n, &enc, &elen) ||
	    api_csv_encode_lines(s, jsonl, len, &lines, &llen, &lcap))
		abort();
	/* the header has no CRLF inside: the records follow its first one
	 * (they may hold NUL bytes: compare by length) */
	rec = strstr(enc, "\r\n") + 2;
	if (llen != elen - (size_t)(rec - enc) ||
	    (llen && memcmp(lines, rec, llen)))
		abort();
	free(enc);
	free(lines);
	free(rows);
	free(lens);
}

static const char SCHEMA[] =
    "{\"columns\": [{\"name\": \"k\", \"type\": \"string\", "
    "\"isPrimaryKey\": true}, {\"name\": \"i\", \"type\": \"integer\"}, "
    "{\"name\": \"n\", \"type\": \"number\"}, {\"name\": \"b\", "
    "\"type\": \"boolean\"}]}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct api_schema s;
	static int loaded;
	char *jsonl = NULL;
	size_t len = 0;

	if (!loaded) {
		if (api_schema_parse(SCHEMA, sizeof(SCHEMA) - 1, NULL, &s))
			abort();
		loaded = 1;
	}
	check_stream(&s, data, size);
	if (api_csv_to_jsonl(&s, (const char *)data, size, &jsonl, &len))
		return 0;
	check_encoders(&s, jsonl, len);
	for (size_t at = 0; at < len;) {
		const char *nl = memchr(jsonl + at, '\n', len - at);
		size_t n = nl ? (size_t)(nl - jsonl) - at : len - at;
		char *row = NULL, *key = NULL, *err = NULL;
		int rc = api_row_validate(&s, jsonl + at, n, &row, &key, &err);

		/* a key of "" or a type the reader let through */
		if (rc == -ENOENT)
			abort(); /* a column the schema lacks */
		free(row);
		free(key);
		free(err);
		at += n + 1;
	}
	free(jsonl);
	return 0;
}

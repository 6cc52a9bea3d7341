/*
 * libFuzzer harness: a rows page as the cursor API sends it, turned into
 * JSONL both ways (copying verbatim columns and decoding every value),
 * which must agree to the byte; every line it writes must be a JSON
 * object the scanner accepts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api_i.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char SCHEMA[] =
    "{\"columns\": [{\"name\": \"k\", \"type\": \"string\", "
    "\"isPrimaryKey\": true}, {\"name\": \"n\", \"type\": \"number\"}, "
    "{\"name\": \"d\", \"type\": \"date\"}, {\"name\": \"b\", "
    "\"type\": \"boolean\"}]}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct api_schema s;
	static int loaded;
	struct jdoc d, line;
	struct abuf a, b;
	uint32_t rows;
	size_t n1 = 0, n2 = 0;
	int r1, r2;

	if (!loaded) {
		if (api_schema_parse(SCHEMA, sizeof(SCHEMA) - 1, NULL, &s))
			abort();
		loaded = 1;
	}
	jdoc_init(&d);
	if (jdoc_parse(&d, (const char *)data, size, 0) ||
	    d.nodes[0].type != JT_OBJECT ||
	    (rows = jdoc_member(&d, 0, "rows")) == UINT32_MAX ||
	    d.nodes[rows].type != JT_ARRAY) {
		jdoc_release(&d);
		return 0;
	}
	abuf_init(&a);
	abuf_init(&b);
	r1 = api_rows_to_jsonl(&s, &d, rows, &a, &n1, NULL, 0);
	r2 = api_rows_to_jsonl(&s, &d, rows, &b, &n2, NULL, API_JSONL_DECODE);
	if (r1 != r2 || (r1 == 0 && (n1 != n2 || a.len != b.len ||
				     memcmp(a.p, b.p, a.len))))
		abort();
	for (size_t at = 0; r1 == 0 && at < a.len;) {
		const char *nl = memchr(a.p + at, '\n', a.len - at);

		if (!nl)
			abort(); /* every line ends with a newline */
		jdoc_init(&line);
		if (jdoc_parse(&line, a.p + at, (size_t)(nl - a.p) - at, 0) ||
		    line.nodes[0].type != JT_OBJECT)
			abort();
		jdoc_release(&line);
		at = (size_t)(nl - a.p) + 1;
	}
	abuf_release(&a);
	abuf_release(&b);
	jdoc_release(&d);
	return 0;
}

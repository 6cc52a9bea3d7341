/* libFuzzer harness: the CSV reader; every line it writes must be a row
 * the import validator accepts (the CSV reader types values by the
 * schema). */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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
	if (api_csv_to_jsonl(&s, (const char *)data, size, &jsonl, &len))
		return 0;
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

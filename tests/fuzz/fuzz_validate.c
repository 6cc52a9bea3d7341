/*
 * libFuzzer harness: the import row validator. A valid line's canonical
 * row must validate again to itself and the same key (what is spooled is
 * what is sent); a refusal always says why.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char SCHEMA[] =
    "{\"columns\": [{\"name\": \"k\", \"type\": \"string\", "
    "\"isPrimaryKey\": true}, {\"name\": \"i\", \"type\": \"integer\", "
    "\"isPrimaryKey\": true}, {\"name\": \"n\", \"type\": \"number\"}, "
    "{\"name\": \"d\", \"type\": \"date\"}, {\"name\": \"b\", "
    "\"type\": \"boolean\"}, {\"name\": \"s\", \"type\": \"string\"}]}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct api_schema s;
	static int loaded;
	char *row = NULL, *key = NULL, *err = NULL;
	char *row2 = NULL, *key2 = NULL, *err2 = NULL;
	int rc;

	if (!loaded) {
		if (api_schema_parse(SCHEMA, sizeof(SCHEMA) - 1, NULL, &s))
			abort();
		loaded = 1;
	}
	rc = api_row_validate(&s, (const char *)data, size, &row, &key, &err);
	if (rc == 0) {
		if (!row || !key || err)
			abort();
		if (api_row_validate(&s, row, strlen(row), &row2, &key2,
				     &err2) ||
		    strcmp(row, row2) || strcmp(key, key2))
			abort();
	} else if ((rc == -EINVAL || rc == -ENOENT) && !err) {
		abort();
	}
	free(row);
	free(key);
	free(err);
	free(row2);
	free(key2);
	free(err2);
	return 0;
}

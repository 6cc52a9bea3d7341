/* libFuzzer harness: schema bodies (cursor columns and flows JSON Schema)
 * as the API sends them, and the canonical schema.json reparsed. */
#include <stdint.h>
#include <stdlib.h>

#include "api.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct api_schema s, again;

	if (api_schema_parse((const char *)data, size, "\"v\"", &s))
		return 0;
	/* what dtfs caches and serves must parse again, the same way */
	if (api_schema_parse(s.json, s.json_len, NULL, &again) ||
	    again.ncolumns != s.ncolumns)
		abort();
	api_schema_release(&again);
	api_schema_release(&s);
	return 0;
}

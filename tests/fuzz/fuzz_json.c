/*
 * libFuzzer harness: the strict JSON scanner (jdoc_parse) with and without
 * UTF-8 validation, and jdoc_emit of what it accepts, checked against the
 * decoding emitter (the two must write the same bytes).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api_i.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	for (int flags = 0; flags <= JDOC_VALIDATE_UTF8; flags++) {
		struct jdoc d;
		struct abuf a, b;

		jdoc_init(&d);
		if (jdoc_parse(&d, (const char *)data, size, flags) == 0) {
			abuf_init(&a);
			abuf_init(&b);
			jdoc_emit(&d, 0, &a);
			jdoc_emit_decoded(&d, 0, &b);
			if (!a.oom && !b.oom &&
			    (a.len != b.len || memcmp(a.p, b.p, a.len)))
				abort(); /* the fast path changed bytes */
			abuf_release(&a);
			abuf_release(&b);
		}
		jdoc_release(&d);
	}
	return 0;
}

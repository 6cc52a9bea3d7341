/*
 * csv.c: RFC 4180 CSV to and from the canonical JSONL rows.
 *
 * The production API imports and exports tables as CSV (a header row of
 * property names, key first). Writing: CRLF line ends (RFC 4180), a field
 * quoted when it holds a comma, a quote, CR or LF, starts or ends with a
 * space or tab, or is an empty string; numbers' text as it is; true/false;
 * an empty field for a null or absent value.
 *
 * Reading is strict, so a damaged file is an error with its line number
 * rather than rows silently shifted into the wrong columns: UTF-8 only (a
 * leading BOM skipped), CRLF or LF line ends (a bare CR is an error outside
 * quotes), every record as many fields as the header, a quote only around a
 * whole field ("" inside for a quote), nothing after a closing quote but a
 * comma or the line end, no unterminated quote. Values are typed by the
 * schema: strings as they are (an empty field is ""), numbers must be JSON
 * numbers (integers without fraction or exponent) and keep their text,
 * booleans true/false in any letter case; an empty field of a non-string
 * column is left out of the row (the platform fills its default).
 *
 * Hand-written rather than libcsv (Debian libcsv-dev): that parser's
 * strict mode still reports errors as byte offsets rather than records and
 * lines, it needs a BOM and UTF-8 check around it anyway, and the whole
 * reader here is a small state machine; one dependency fewer.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api_i.h"
#include "log.h"
#include "utf8.h"

/* ---- writing ---------------------------------------------------------- */

static bool needs_quotes(const char *s, size_t n)
{
	if (!n)
		return true; /* "" is an empty string, nothing is no value */
	if (s[0] == ' ' || s[0] == '\t' || s[n - 1] == ' ' || s[n - 1] == '\t')
		return true;
	for (size_t i = 0; i < n; i++)
		if (s[i] == ',' || s[i] == '"' || s[i] == '\r' || s[i] == '\n')
			return true;
	return false;
}

static void put_field(struct abuf *out, const char *s, size_t n)
{
	if (!needs_quotes(s, n)) {
		abuf_add(out, s, n);
		return;
	}
	abuf_addc(out, '"');
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '"')
			abuf_addc(out, '"');
		abuf_addc(out, s[i]);
	}
	abuf_addc(out, '"');
}

int api_csv_encode(const struct api_schema *schema, const char *const *rows,
		   const size_t *lens, size_t nrows, char **csv, size_t *len)
{
	struct abuf out, tmp;
	struct jdoc d;
	uint32_t *slot = NULL;
	int rc = 0;

	abuf_init(&out);
	abuf_init(&tmp);
	jdoc_init(&d);
	if (!schema->ncolumns)
		return -EINVAL;
	slot = calloc(schema->ncolumns, sizeof(*slot));
	if (!slot) {
		rc = -ENOMEM;
		goto out;
	}
	for (size_t c = 0; !*csv && c < schema->ncolumns; c++) {
		put_field(&out, schema->columns[c].name,
			  strlen(schema->columns[c].name));
		abuf_add(&out, c + 1 < schema->ncolumns ? "," : "\r\n",
			 c + 1 < schema->ncolumns ? 1 : 2);
	}
	for (size_t r = 0; r < nrows; r++) {
		uint32_t k;

		rc = jdoc_parse(&d, rows[r], lens[r], JDOC_VALIDATE_UTF8);
		if (rc == -ENOMEM)
			goto out;
		if (rc || d.nodes[0].type != JT_OBJECT) {
			log_err("encode CSV failed: row %zu is not a JSON "
				"object",
				r + 1);
			rc = -EINVAL;
			goto out;
		}
		for (size_t c = 0; c < schema->ncolumns; c++)
			slot[c] = UINT32_MAX;
		k = jdoc_child(0);
		for (uint32_t m = 0; m < d.nodes[0].n; m++) {
			uint32_t v = jdoc_next(&d, k);
			size_t c;

			for (c = 0; c < schema->ncolumns; c++)
				if (jdoc_str_eq(
					&d, k, schema->columns[c].name,
					strlen(schema->columns[c].name)))
					break;
			if (c == schema->ncolumns) {
				log_err("encode CSV failed: row %zu has a "
					"column the schema lacks",
					r + 1);
				rc = -EINVAL;
				goto out;
			}
			slot[c] = v;
			k = jdoc_next(&d, v);
		}
		for (size_t c = 0; c < schema->ncolumns; c++) {
			const struct jnode *nd;

			if (c)
				abuf_addc(&out, ',');
			if (slot[c] == UINT32_MAX)
				continue;
			nd = &d.nodes[slot[c]];
			switch ((enum jtype)nd->type) {
			case JT_NULL:
				break;
			case JT_STRING:
				tmp.len = 0;
				jdoc_str_decode(&d, slot[c], &tmp);
				put_field(&out, tmp.p ? tmp.p : "", tmp.len);
				break;
			case JT_NUMBER:
			case JT_TRUE:
			case JT_FALSE:
				abuf_add(&out, d.text + nd->off, nd->len);
				break;
			default:
				log_err("encode CSV failed: row %zu: %s is "
					"%s, which a CSV field cannot hold",
					r + 1, schema->columns[c].name,
					jtype_name((enum jtype)nd->type));
				rc = -EINVAL;
				goto out;
			}
		}
		abuf_add(&out, "\r\n", 2);
	}
	if (out.oom || tmp.oom) {
		rc = -ENOMEM;
		goto out;
	}
	if (*csv) {
		char *p = realloc(*csv, *len + out.len + 1);

		if (!p) {
			rc = -ENOMEM;
			goto out;
		}
		if (out.len)
			memcpy(p + *len, out.p, out.len);
		*len += out.len;
		p[*len] = '\0';
		*csv = p;
	} else {
		abuf_reserve(&out, 0);
		*csv = abuf_detach(&out, len);
		if (!*csv)
			rc = -ENOMEM;
	}
out:
	abuf_release(&out);
	free(slot);
	abuf_release(&tmp);
	jdoc_release(&d);
	return rc;
}

/* ---- reading ---------------------------------------------------------- */

struct csv_reader {
	const char *s;
	size_t n, pos;
	size_t line; /* of pos, from 1 */
	struct abuf field;
	bool quoted; /* the field just read was quoted */
};

/* Read one field into r->field. *end: 0 more fields follow, 1 the record
 * ended, 2 the input ended. Returns 0 or -EINVAL (logged). */
static int csv_field(struct csv_reader *r, int *end)
{
	const char *s = r->s;
	size_t i = r->pos, start_line = r->line;

	r->field.len = 0;
	r->quoted = false;
	if (i < r->n && s[i] == '"') {
		r->quoted = true;
		for (i++;; i++) {
			if (i >= r->n) {
				log_err("read CSV failed: line %zu: a quoted "
					"field is never closed",
					start_line);
				return -EINVAL;
			}
			if (s[i] == '"') {
				if (i + 1 < r->n && s[i + 1] == '"') {
					abuf_addc(&r->field, '"');
					i++;
					continue;
				}
				i++;
				break;
			}
			if (s[i] == '\n')
				r->line++;
			abuf_addc(&r->field, s[i]);
		}
	} else {
		size_t b = i;

		while (i < r->n && s[i] != ',' && s[i] != '\r' &&
		       s[i] != '\n') {
			if (s[i] == '"') {
				log_err("read CSV failed: line %zu: a quote "
					"inside an unquoted field",
					r->line);
				return -EINVAL;
			}
			i++;
		}
		abuf_add(&r->field, s + b, i - b);
	}
	if (i >= r->n) {
		*end = 2;
	} else if (s[i] == ',') {
		*end = 0;
		i++;
	} else if (s[i] == '\n') {
		*end = 1;
		i++;
		r->line++;
	} else if (s[i] == '\r' && i + 1 < r->n && s[i + 1] == '\n') {
		*end = 1;
		i += 2;
		r->line++;
	} else {
		log_err("read CSV failed: line %zu: %s", r->line,
			s[i] == '\r' ? "a carriage return without a line feed"
				     : "text after a closing quote");
		return -EINVAL;
	}
	if (*end == 1 && i >= r->n)
		*end = 2; /* the last line has its line end */
	r->pos = i;
	return r->field.oom ? -ENOMEM : 0;
}

/* Does s[0..n) parse as exactly one JSON number? *fracexp set. */
static bool json_number(const char *s, size_t n, bool *fracexp)
{
	size_t i = 0;

	*fracexp = false;
	if (i < n && s[i] == '-')
		i++;
	if (i < n && s[i] == '0') {
		i++;
	} else if (i < n && s[i] >= '1' && s[i] <= '9') {
		while (i < n && s[i] >= '0' && s[i] <= '9')
			i++;
	} else {
		return false;
	}
	if (i < n && s[i] == '.') {
		*fracexp = true;
		if (++i >= n || s[i] < '0' || s[i] > '9')
			return false;
		while (i < n && s[i] >= '0' && s[i] <= '9')
			i++;
	}
	if (i < n && (s[i] == 'e' || s[i] == 'E')) {
		*fracexp = true;
		i++;
		if (i < n && (s[i] == '+' || s[i] == '-'))
			i++;
		if (i >= n || s[i] < '0' || s[i] > '9')
			return false;
		while (i < n && s[i] >= '0' && s[i] <= '9')
			i++;
	}
	return i == n;
}

/* Append column col's value from the field (typed); *skip when the field
 * gives no value. Returns 0 or -EINVAL (logged). */
static int csv_value(const struct api_column *col, const struct abuf *f,
		     size_t line, struct abuf *out, bool *skip)
{
	const char *s = f->p ? f->p : "";
	bool fracexp;

	*skip = false;
	switch (col->type) {
	case API_TYPE_STRING:
	case API_TYPE_DATE:
		if (col->type == API_TYPE_DATE && f->len &&
		    !api_date_valid(s, f->len))
			break;
		if (col->type == API_TYPE_DATE && !f->len) {
			*skip = true;
			return 0;
		}
		json_emit_string(out, s, f->len);
		return 0;
	case API_TYPE_NUMBER:
	case API_TYPE_INTEGER:
		if (!f->len) {
			*skip = true;
			return 0;
		}
		if (!json_number(s, f->len, &fracexp) ||
		    (col->type == API_TYPE_INTEGER && fracexp))
			break;
		abuf_add(out, s, f->len);
		return 0;
	case API_TYPE_BOOLEAN:
		if (!f->len) {
			*skip = true;
			return 0;
		}
		if (f->len == 4 && !strncasecmp(s, "true", 4)) {
			abuf_add(out, "true", 4);
			return 0;
		}
		if (f->len == 5 && !strncasecmp(s, "false", 5)) {
			abuf_add(out, "false", 5);
			return 0;
		}
		break;
	}
	log_err("read CSV failed: line %zu: %s: not %s", line, col->name,
		col->type == API_TYPE_INTEGER	? "an integer"
		: col->type == API_TYPE_NUMBER	? "a number"
		: col->type == API_TYPE_BOOLEAN ? "true or false"
						: "an RFC 3339 date");
	return -EINVAL;
}

int api_csv_to_jsonl(const struct api_schema *schema, const char *csv,
		     size_t len, char **jsonl, size_t *jsonl_len)
{
	struct csv_reader r = {.s = csv, .n = len, .line = 1};
	struct abuf out, *vals = NULL;
	size_t *col_of = NULL, nfields = 0, cap = 0;
	bool *have = NULL;
	int end = 0, rc;

	*jsonl = NULL;
	*jsonl_len = 0;
	abuf_init(&out);
	abuf_init(&r.field);
	if (len >= 3 && !memcmp(csv, "\xef\xbb\xbf", 3))
		r.pos = 3;
	for (size_t i = r.pos, line = 1; i < len;) {
		size_t k =
		    utf8_seq_len((const unsigned char *)csv + i, len - i);

		if (!k) {
			log_err("read CSV failed: line %zu: not UTF-8", line);
			rc = -EINVAL;
			goto out;
		}
		if (csv[i] == '\n')
			line++;
		i += k;
	}
	if (r.pos >= len) {
		log_err("read CSV failed: no header row");
		rc = -EINVAL;
		goto out;
	}
	have = calloc(schema->ncolumns ? schema->ncolumns : 1, sizeof(*have));
	if (!have) {
		rc = -ENOMEM;
		goto out;
	}
	/* the header: each name a column of the schema, once */
	do {
		size_t c;

		rc = csv_field(&r, &end);
		if (rc)
			goto out;
		for (c = 0; c < schema->ncolumns; c++)
			if (strlen(schema->columns[c].name) == r.field.len &&
			    !memcmp(schema->columns[c].name, r.field.p,
				    r.field.len))
				break;
		if (c == schema->ncolumns || have[c]) {
			log_err("read CSV failed: line 1: %s column '%.*s'",
				c == schema->ncolumns ? "unknown" : "repeated",
				(int)(r.field.len > 256 ? 256 : r.field.len),
				r.field.p ? r.field.p : "");
			rc = -EINVAL;
			goto out;
		}
		have[c] = true;
		if (nfields == cap) {
			size_t ncap = cap ? cap * 2 : 16;
			size_t *p = realloc(col_of, ncap * sizeof(*p));

			if (!p) {
				rc = -ENOMEM;
				goto out;
			}
			col_of = p;
			cap = ncap;
		}
		col_of[nfields++] = c;
	} while (end == 0);
	for (size_t c = 0; c < schema->ncolumns; c++)
		if (schema->columns[c].key && !have[c]) {
			log_err("read CSV failed: line 1: no key column '%s'",
				schema->columns[c].name);
			rc = -EINVAL;
			goto out;
		}
	vals = calloc(schema->ncolumns, sizeof(*vals));
	if (!vals) {
		rc = -ENOMEM;
		goto out;
	}
	for (size_t c = 0; c < schema->ncolumns; c++)
		abuf_init(&vals[c]);
	/* the records */
	while (end != 2) {
		size_t line = r.line, f = 0;
		bool first = true;

		for (size_t c = 0; c < schema->ncolumns; c++)
			have[c] = false;
		do {
			bool skip;
			size_t c;

			rc = csv_field(&r, &end);
			if (rc)
				goto out;
			if (f == nfields) {
				log_err("read CSV failed: line %zu: more "
					"fields than the header's %zu",
					line, nfields);
				rc = -EINVAL;
				goto out;
			}
			c = col_of[f++];
			vals[c].len = 0;
			rc = csv_value(&schema->columns[c], &r.field, line,
				       &vals[c], &skip);
			if (rc)
				goto out;
			have[c] = !skip;
		} while (end == 0);
		if (f != nfields) {
			log_err("read CSV failed: line %zu: %zu field%s, the "
				"header has %zu",
				line, f, f == 1 ? "" : "s", nfields);
			rc = -EINVAL;
			goto out;
		}
		abuf_addc(&out, '{');
		for (size_t c = 0; c < schema->ncolumns; c++) {
			if (!have[c])
				continue;
			if (!first)
				abuf_addc(&out, ',');
			first = false;
			json_emit_string(&out, schema->columns[c].name,
					 strlen(schema->columns[c].name));
			abuf_addc(&out, ':');
			abuf_add(&out, vals[c].p, vals[c].len);
		}
		abuf_add(&out, "}\n", 2);
	}
	rc = 0;
	for (size_t c = 0; c < schema->ncolumns; c++)
		if (vals[c].oom)
			rc = -ENOMEM;
	if (out.oom || rc) {
		rc = -ENOMEM;
		goto out;
	}
	abuf_reserve(&out, 0);
	*jsonl = abuf_detach(&out, jsonl_len);
	if (!*jsonl)
		rc = -ENOMEM;
out:
	if (vals)
		for (size_t c = 0; c < schema->ncolumns; c++)
			abuf_release(&vals[c]);
	free(vals);
	free(have);
	free(col_of);
	abuf_release(&r.field);
	abuf_release(&out);
	return rc;
}

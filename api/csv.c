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
#include <inttypes.h>
#include <stdarg.h>
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

/* One row (a JSON object of the schema's columns) as a CSV record, the
 * general way: parsed whole. r is its number for the log. */
static int encode_row(const struct api_schema *schema, const char *row,
		      size_t len, size_t r, struct jdoc *d, uint32_t *slot,
		      struct abuf *tmp, struct abuf *out)
{
	uint32_t k;
	int rc;

	rc = jdoc_parse(d, row, len, JDOC_VALIDATE_UTF8);
	if (rc == -ENOMEM)
		return rc;
	if (rc || d->nodes[0].type != JT_OBJECT) {
		log_err("encode CSV failed: row %zu is not a JSON object", r);
		return -EINVAL;
	}
	for (size_t c = 0; c < schema->ncolumns; c++)
		slot[c] = UINT32_MAX;
	k = jdoc_child(0);
	for (uint32_t m = 0; m < d->nodes[0].n; m++) {
		uint32_t v = jdoc_next(d, k);
		size_t c;

		for (c = 0; c < schema->ncolumns; c++)
			if (jdoc_str_eq(d, k, schema->columns[c].name,
					strlen(schema->columns[c].name)))
				break;
		if (c == schema->ncolumns) {
			log_err("encode CSV failed: row %zu has a column the "
				"schema lacks",
				r);
			return -EINVAL;
		}
		slot[c] = v;
		k = jdoc_next(d, v);
	}
	for (size_t c = 0; c < schema->ncolumns; c++) {
		const struct jnode *nd;

		if (c)
			abuf_addc(out, ',');
		if (slot[c] == UINT32_MAX)
			continue;
		nd = &d->nodes[slot[c]];
		switch ((enum jtype)nd->type) {
		case JT_NULL:
			break;
		case JT_STRING:
			tmp->len = 0;
			jdoc_str_decode(d, slot[c], tmp);
			put_field(out, tmp->p ? tmp->p : "", tmp->len);
			break;
		case JT_NUMBER:
		case JT_TRUE:
		case JT_FALSE:
			abuf_add(out, d->text + nd->off, nd->len);
			break;
		default:
			log_err("encode CSV failed: row %zu: %s is %s, which a "
				"CSV field cannot hold",
				r, schema->columns[c].name,
				jtype_name((enum jtype)nd->type));
			return -EINVAL;
		}
	}
	abuf_add(out, "\r\n", 2);
	return 0;
}

/* What encode_row needs besides the row. */
struct encoder {
	struct jdoc d;
	uint32_t *slot;
	struct abuf tmp;
	char **names; /* each column's name as a JSON string, the
			 way rows.jsonl spells it */
	size_t *nlen;
};

static void encoder_release(struct encoder *e, size_t ncolumns)
{
	jdoc_release(&e->d);
	abuf_release(&e->tmp);
	free(e->slot);
	if (e->names)
		for (size_t c = 0; c < ncolumns; c++)
			free(e->names[c]);
	free(e->names);
	free(e->nlen);
}

static int encoder_init(struct encoder *e, const struct api_schema *schema)
{
	size_t n = schema->ncolumns;

	memset(e, 0, sizeof(*e));
	jdoc_init(&e->d);
	abuf_init(&e->tmp);
	e->slot = calloc(n, sizeof(*e->slot));
	e->names = calloc(n, sizeof(*e->names));
	e->nlen = calloc(n, sizeof(*e->nlen));
	if (!e->slot || !e->names || !e->nlen)
		return -ENOMEM;
	for (size_t c = 0; c < n; c++) {
		struct abuf b;

		abuf_init(&b);
		json_emit_string(&b, schema->columns[c].name,
				 strlen(schema->columns[c].name));
		abuf_addc(&b, ':');
		if (b.oom) {
			abuf_release(&b);
			return -ENOMEM;
		}
		e->names[c] = abuf_detach(&b, &e->nlen[c]);
		if (!e->names[c])
			return -ENOMEM;
	}
	return 0;
}

static void header(const struct api_schema *schema, struct abuf *out)
{
	for (size_t c = 0; c < schema->ncolumns; c++) {
		put_field(out, schema->columns[c].name,
			  strlen(schema->columns[c].name));
		abuf_add(out, c + 1 < schema->ncolumns ? "," : "\r\n",
			 c + 1 < schema->ncolumns ? 1 : 2);
	}
}

/* Hand out's bytes to the caller: appended to *csv, or as a new *csv. */
static int hand_over(struct abuf *out, char **csv, size_t *len)
{
	if (out->oom)
		return -ENOMEM;
	if (*csv) {
		char *p = realloc(*csv, *len + out->len + 1);

		if (!p)
			return -ENOMEM;
		if (out->len)
			memcpy(p + *len, out->p, out->len);
		*len += out->len;
		p[*len] = '\0';
		*csv = p;
		return 0;
	}
	abuf_reserve(out, 0);
	*csv = abuf_detach(out, len);
	return *csv ? 0 : -ENOMEM;
}

int api_csv_encode(const struct api_schema *schema, const char *const *rows,
		   const size_t *lens, size_t nrows, char **csv, size_t *len)
{
	struct encoder e;
	struct abuf out;
	int rc;

	abuf_init(&out);
	if (!schema->ncolumns)
		return -EINVAL;
	rc = encoder_init(&e, schema);
	if (rc)
		goto out;
	if (!*csv)
		header(schema, &out);
	for (size_t r = 0; r < nrows && !rc; r++)
		rc = encode_row(schema, rows[r], lens[r], r + 1, &e.d, e.slot,
				&e.tmp, &out);
	if (!rc)
		rc = e.tmp.oom ? -ENOMEM : hand_over(&out, csv, len);
out:
	encoder_release(&e, schema->ncolumns);
	abuf_release(&out);
	return rc;
}

static inline uint64_t word(const char *p)
{
	uint64_t w;

	memcpy(&w, p, 8);
	return w;
}

/* a[0..n) == b[0..n), inline: keys are short and memcmp's call costs
 * more than the compare. Whole words, the last one overlapping. */
static inline bool same(const char *a, const char *b, size_t n)
{
	size_t i;

	if (n < 8) {
		while (n--)
			if (*a++ != *b++)
				return false;
		return true;
	}
	for (i = 0; i + 8 < n; i += 8)
		if (word(a + i) != word(b + i))
			return false;
	return word(a + n - 8) == word(b + n - 8);
}

/* SWAR: a byte of w equal to c sets the high bit of its byte (and maybe
 * of bytes above it, never below: the lowest set bit is exact). */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL
static inline uint64_t has_byte(uint64_t w, unsigned char c)
{
	uint64_t x = w ^ (ONES * c);

	return (x - ONES) & ~x & HIGHS;
}

/* The same for a byte below c (c <= 128). */
static inline uint64_t has_less(uint64_t w, unsigned char c)
{
	return (w - ONES * c) & ~w & HIGHS;
}

/*
 * The fast way for a line as rows.jsonl holds it: a compact object whose
 * keys are the schema's columns in schema order, spelled as json-c writes
 * them, with scalar values, then '\n' or the end. Writes into o (room for
 * the line's length plus a comma per column and CRLF reserved by the
 * caller) and returns the bytes written, *next the start of the next
 * line; 0 when the line is not of that shape (then the general way takes
 * it). The same bytes as encode_row().
 */
static size_t fast_line(const struct api_schema *schema,
			const struct encoder *e, const char *p, const char *end,
			char *o, const char **next)
{
	char *o0 = o;
	size_t col = 0, ncol = schema->ncolumns;

	if (p >= end || *p++ != '{')
		return 0;
	if (p < end && *p == '}') {
		p++;
		goto done;
	}
	for (;;) {
		size_t c = col;
		const char *q;

		while (c < ncol && ((size_t)(end - p) < e->nlen[c] ||
				    !same(p, e->names[c], e->nlen[c])))
			c++;
		if (c == ncol)
			return 0;
		while (col < c) {
			*o++ = ',';
			col++;
		}
		p += e->nlen[c];
		if (p >= end)
			return 0;
		if (*p == '"') {
			char *f = o;
			bool quote = false;

			/* copied as scanned, a word at a time while no byte is
			 * special (o has 8 bytes of slack): most fields need
			 * no quotes */
			for (q = p + 1;;) {
				while (end - q >= 8) {
					uint64_t w = word(q), m;

					/* '"', ',' and '\n' are below '-' */
					m = has_less(w, '-') |
					    has_byte(w, '\\');
					memcpy(o, &w, 8);
					if (m) {
						size_t k =
						    (size_t)__builtin_ctzll(m) /
						    8;

						o += k;
						q += k;
						break;
					}
					o += 8;
					q += 8;
				}
				if (q >= end || *q == '"')
					break;
				if (*q == '\\' || *q == '\n')
					return 0; /* escapes: the general way */
				quote |= *q == ',';
				*o++ = *q++;
			}
			if (q >= end)
				return 0;
			/* empty, or a blank at either end: quoted too */
			quote |= o == f || *f == ' ' || *f == '\t' ||
				 o[-1] == ' ' || o[-1] == '\t';
			if (quote) {
				memmove(f + 1, f, (size_t)(o - f));
				*f = '"';
				o++;
				*o++ = '"';
			}
			p = q + 1;
		} else if (*p == '{' || *p == '[') {
			return 0;
		} else if (*p == 'n') {
			if (end - p < 4 || !same(p, "null", 4))
				return 0;
			p += 4;
		} else {
			for (q = p;
			     q < end && *q != ',' && *q != '}' && *q != '\n';
			     q++)
				*o++ = *q;
			p = q;
		}
		if (p >= end)
			return 0;
		if (*p == '}') {
			p++;
			break;
		}
		if (*p++ != ',')
			return 0;
		col++;
		if (col >= ncol)
			return 0;
		*o++ = ',';
	}
done:
	if (p < end && *p != '\n')
		return 0;
	*next = p < end ? p + 1 : p;
	while (col + 1 < ncol) {
		*o++ = ',';
		col++;
	}
	*o++ = '\r';
	*o++ = '\n';
	return (size_t)(o - o0);
}

int api_csv_encode_lines(const struct api_schema *schema, const char *jsonl,
			 size_t len, char **csv, size_t *csv_len,
			 size_t *csv_cap)
{
	struct abuf out = {.p = *csv, .len = *csv_len, .cap = *csv_cap};
	const char *p = jsonl, *end = jsonl + len;
	struct encoder e;
	size_t r = 0;
	int rc;

	if (!schema->ncolumns)
		return -EINVAL;
	rc = encoder_init(&e, schema);
	/* room for the fast path: the block's bytes plus, per line, a comma
	 * per column and CRLF (lines of at least "{}" and its newline) */
	if (!rc && !abuf_reserve(
		       &out, len + (len / 3 + 1) * (schema->ncolumns + 2) + 8))
		rc = -ENOMEM;
	while (!rc && p < end) {
		const char *nl, *le, *next;
		size_t n;

		r++;
		if (*p == '\n') {
			p++;
			continue;
		}
		n = fast_line(schema, &e, p, end, out.p + out.len, &next);
		if (n) {
			out.len += n;
			p = next;
			continue;
		}
		nl = memchr(p, '\n', (size_t)(end - p));
		le = nl ? nl : end;
		rc = encode_row(schema, p, (size_t)(le - p), r, &e.d, e.slot,
				&e.tmp, &out);
		p = nl ? nl + 1 : end;
	}
	if (!rc && (out.oom || e.tmp.oom))
		rc = -ENOMEM;
	encoder_release(&e, schema->ncolumns);
	if (out.p)
		out.p[out.len] = '\0';
	*csv = out.p;
	*csv_len = out.len;
	*csv_cap = out.cap;
	return rc;
}

/* ---- reading ---------------------------------------------------------- */

/*
 * Streaming: bytes arrive in any pieces. A framing state machine finds the
 * end of each record (a line feed outside quotes) and keeps its bytes; the
 * record is then parsed field by field, strictly. A damaged record is
 * reported on its own (the caller quarantines it) and the next record
 * starts at the next line end outside quotes, so one bad record does not
 * take the rest of the file with it. Only the header is fatal.
 */
enum frame {
	FR_START, /* at the start of a field */
	FR_UNQ,	  /* in an unquoted field */
	FR_Q,	  /* in a quoted field */
	FR_QQ,	  /* a quote in a quoted field: the end, or "" */
};

struct api_csv_reader {
	const struct api_schema *schema;
	size_t max_record;
	int flags;
	struct abuf rec; /* the current record's bytes */
	bool overlong;	 /* rec passed max_record: truncated */
	enum frame fr;
	uint64_t line;	   /* line of the next byte, from 1 */
	uint64_t rec_line; /* line where rec starts */
	uint64_t records;  /* records after the header so far */
	bool have_header;
	int header_rc;	 /* latched header error */
	char error[400]; /* the header error */
	size_t *col_of;	 /* header field i is column col_of[i] */
	size_t nfields;
	bool *have;	   /* per column: a value in this record */
	struct abuf *vals; /* per column: the value's JSON */
	struct abuf field, row;
	char why[400]; /* a record's error */
};

/* A cursor over one record's bytes (no line end outside quotes). */
struct csv_fields {
	const char *s;
	size_t n, pos;
	uint64_t line; /* of pos */
	bool quoted;   /* the field just read was quoted */
};

/* Read one field into out. *last: the record ended. Returns 0, or -EINVAL
 * with why set. */
static int csv_field(struct csv_fields *f, struct abuf *out, bool *last,
		     char *why, size_t wsize)
{
	const char *s = f->s;
	size_t i = f->pos;
	uint64_t start_line = f->line;

	out->len = 0;
	f->quoted = false;
	if (i < f->n && s[i] == '"') {
		f->quoted = true;
		for (i++;; i++) {
			if (i >= f->n) {
				snprintf(why, wsize,
					 "line %" PRIu64 ": a quoted "
					 "field is never closed",
					 start_line);
				return -EINVAL;
			}
			if (s[i] == '"') {
				if (i + 1 < f->n && s[i + 1] == '"') {
					abuf_addc(out, '"');
					i++;
					continue;
				}
				i++;
				break;
			}
			if (s[i] == '\n')
				f->line++;
			abuf_addc(out, s[i]);
		}
	} else {
		size_t b = i;

		while (i < f->n && s[i] != ',' && s[i] != '\r') {
			if (s[i] == '"') {
				snprintf(why, wsize,
					 "line %" PRIu64 ": a quote "
					 "inside an unquoted field",
					 f->line);
				return -EINVAL;
			}
			i++;
		}
		abuf_add(out, s + b, i - b);
	}
	if (i >= f->n) {
		*last = true;
	} else if (s[i] == ',') {
		*last = false;
		i++;
	} else {
		snprintf(why, wsize, "line %" PRIu64 ": %s", f->line,
			 s[i] == '\r' ? "a carriage return without a line feed"
				      : "text after a closing quote");
		return -EINVAL;
	}
	f->pos = i;
	return out->oom ? -ENOMEM : 0;
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
 * gives no value. Returns 0 or -EINVAL with why set. */
static int csv_value(const struct api_column *col, const struct abuf *f,
		     uint64_t line, struct abuf *out, bool *skip, char *why,
		     size_t wsize)
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
	snprintf(why, wsize, "line %" PRIu64 ": %s: not %s", line, col->name,
		 col->type == API_TYPE_INTEGER	 ? "an integer"
		 : col->type == API_TYPE_NUMBER	 ? "a number"
		 : col->type == API_TYPE_BOOLEAN ? "true or false"
						 : "an RFC 3339 date");
	return -EINVAL;
}

int api_csv_reader_new(const struct api_schema *schema, size_t max_record,
		       int flags, struct api_csv_reader **out)
{
	struct api_csv_reader *r = calloc(1, sizeof(*r));
	size_t nc = schema->ncolumns ? schema->ncolumns : 1;

	*out = NULL;
	if (!r)
		return -ENOMEM;
	r->schema = schema;
	r->max_record = max_record ? max_record : SIZE_MAX;
	r->flags = flags;
	r->line = r->rec_line = 1;
	abuf_init(&r->rec);
	abuf_init(&r->field);
	abuf_init(&r->row);
	r->have = calloc(nc, sizeof(*r->have));
	r->vals = calloc(nc, sizeof(*r->vals));
	if (!r->have || !r->vals) {
		api_csv_reader_free(r);
		return -ENOMEM;
	}
	for (size_t c = 0; c < schema->ncolumns; c++)
		abuf_init(&r->vals[c]);
	*out = r;
	return 0;
}

void api_csv_reader_free(struct api_csv_reader *r)
{
	if (!r)
		return;
	if (r->vals)
		for (size_t c = 0; c < r->schema->ncolumns; c++)
			abuf_release(&r->vals[c]);
	free(r->vals);
	free(r->have);
	free(r->col_of);
	abuf_release(&r->rec);
	abuf_release(&r->field);
	abuf_release(&r->row);
	free(r);
}

bool api_csv_reader_pending(const struct api_csv_reader *r)
{
	return r->rec.len || r->overlong;
}

const char *api_csv_reader_error(const struct api_csv_reader *r)
{
	return r->error[0] ? r->error : NULL;
}

/* The first byte of s[0..n) that is not UTF-8, or n. */
static size_t utf8_bad(const char *s, size_t n)
{
	size_t i = 0;

	while (i < n) {
		size_t k;

		if ((unsigned char)s[i] < 0x80) {
			i++;
			continue;
		}
		k = utf8_seq_len((const unsigned char *)s + i, n - i);
		if (!k)
			return i;
		i += k;
	}
	return n;
}

static uint64_t lines_in(const char *s, size_t n)
{
	uint64_t k = 0;

	for (size_t i = 0; i < n; i++)
		k += s[i] == '\n';
	return k;
}

static int header_fail(struct api_csv_reader *r, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int header_fail(struct api_csv_reader *r, int rc, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(r->error, sizeof(r->error), fmt, ap);
	va_end(ap);
	r->header_rc = rc;
	return rc;
}

/* The header record: each name a column of the schema, once, the key
 * among them. Returns 0, -ENOENT (an unknown column: drift), -EINVAL. */
static int take_header(struct api_csv_reader *r, const char *s, size_t n)
{
	const struct api_schema *schema = r->schema;
	struct csv_fields f = {.s = s, .n = n, .line = r->rec_line};
	size_t cap = 0, bad = utf8_bad(s, n);
	bool last = false;
	int rc;

	if (bad < n)
		return header_fail(r, -EINVAL, "line %" PRIu64 ": not UTF-8",
				   r->rec_line + lines_in(s, bad));
	if (r->overlong)
		return header_fail(r, -EINVAL,
				   "line 1: a header longer than "
				   "%zu bytes",
				   r->max_record);
	for (size_t c = 0; c < schema->ncolumns; c++)
		r->have[c] = false;
	while (!last) {
		size_t c;

		rc = csv_field(&f, &r->field, &last, r->why, sizeof(r->why));
		if (rc == -ENOMEM)
			return rc;
		if (rc)
			return header_fail(r, -EINVAL, "%s", r->why);
		for (c = 0; c < schema->ncolumns; c++)
			if (strlen(schema->columns[c].name) == r->field.len &&
			    !memcmp(schema->columns[c].name, r->field.p,
				    r->field.len))
				break;
		if (c == schema->ncolumns || r->have[c])
			return header_fail(
			    r, c == schema->ncolumns ? -ENOENT : -EINVAL,
			    "line %" PRIu64 ": %s column '%.*s'", r->rec_line,
			    c == schema->ncolumns ? "unknown" : "repeated",
			    (int)(r->field.len > 256 ? 256 : r->field.len),
			    r->field.p ? r->field.p : "");
		r->have[c] = true;
		if (r->nfields == cap) {
			size_t ncap = cap ? cap * 2 : 16;
			size_t *p = realloc(r->col_of, ncap * sizeof(*p));

			if (!p)
				return -ENOMEM;
			r->col_of = p;
			cap = ncap;
		}
		r->col_of[r->nfields++] = c;
	}
	for (size_t c = 0; c < schema->ncolumns; c++)
		if (schema->columns[c].key && !r->have[c])
			return header_fail(
			    r, -EINVAL, "line %" PRIu64 ": no key column '%s'",
			    r->rec_line, schema->columns[c].name);
	r->have_header = true;
	return 0;
}

/* One record after the header into r->row, or why it is refused
 * (-EINVAL, r->why set). */
static int take_fields(struct api_csv_reader *r, const char *s, size_t n)
{
	const struct api_schema *schema = r->schema;
	struct csv_fields f = {.s = s, .n = n, .line = r->rec_line};
	size_t nf = 0, bad = utf8_bad(s, n);
	bool last = false, first = true;
	int rc;

	r->row.len = 0;
	if (r->overlong) {
		snprintf(r->why, sizeof(r->why),
			 "line %" PRIu64 ": a record "
			 "longer than %zu bytes",
			 r->rec_line, r->max_record);
		return -EINVAL;
	}
	if (bad < n) {
		snprintf(r->why, sizeof(r->why), "line %" PRIu64 ": not UTF-8",
			 r->rec_line + lines_in(s, bad));
		return -EINVAL;
	}
	for (size_t c = 0; c < schema->ncolumns; c++)
		r->have[c] = false;
	while (!last) {
		bool skip;
		size_t c;

		rc = csv_field(&f, &r->field, &last, r->why, sizeof(r->why));
		if (rc)
			return rc;
		if (nf == r->nfields) {
			snprintf(r->why, sizeof(r->why),
				 "line %" PRIu64 ": "
				 "more fields than the header's %zu",
				 r->rec_line, r->nfields);
			return -EINVAL;
		}
		c = r->col_of[nf++];
		r->vals[c].len = 0;
		rc = csv_value(&schema->columns[c], &r->field, r->rec_line,
			       &r->vals[c], &skip, r->why, sizeof(r->why));
		if (rc)
			return rc;
		if ((r->flags & API_CSV_EMPTY_ABSENT) && !f.quoted &&
		    !r->field.len)
			skip = true;
		if (r->vals[c].oom)
			return -ENOMEM;
		r->have[c] = !skip;
	}
	if (nf != r->nfields) {
		snprintf(r->why, sizeof(r->why),
			 "line %" PRIu64 ": %zu field%s, "
			 "the header has %zu",
			 r->rec_line, nf, nf == 1 ? "" : "s", r->nfields);
		return -EINVAL;
	}
	abuf_addc(&r->row, '{');
	for (size_t c = 0; c < schema->ncolumns; c++) {
		if (!r->have[c])
			continue;
		if (!first)
			abuf_addc(&r->row, ',');
		first = false;
		json_emit_string(&r->row, schema->columns[c].name,
				 strlen(schema->columns[c].name));
		abuf_addc(&r->row, ':');
		abuf_add(&r->row, r->vals[c].p, r->vals[c].len);
	}
	abuf_addc(&r->row, '}');
	return r->row.oom ? -ENOMEM : 0;
}

/* The record in r->rec is complete. */
static int take_record(struct api_csv_reader *r, api_csv_record_fn fn,
		       void *arg)
{
	const char *s = r->rec.p ? r->rec.p : "";
	size_t n = r->rec.len;
	struct api_csv_record rec = {0};
	int rc = 0;

	if (n && s[n - 1] == '\r' && r->fr != FR_Q)
		n--; /* CRLF */
	if (!r->have_header) {
		if (n >= 3 && !memcmp(s, "\xef\xbb\xbf", 3)) {
			s += 3;
			n -= 3;
		}
		if (!n && !r->overlong)
			goto next; /* blank lines before the header */
		rc = take_header(r, s, n);
		goto next;
	}
	if (!n && !r->overlong)
		goto next; /* a blank line is no record */
	rec.record = ++r->records;
	rec.line = r->rec_line;
	rec.text = s;
	rec.text_len = n;
	rc = take_fields(r, s, n);
	if (rc == -ENOMEM)
		goto next;
	if (rc) {
		rec.error = r->why;
	} else {
		rec.row = r->row.p;
		rec.row_len = r->row.len;
	}
	rc = fn(arg, &rec);
next:
	r->rec.len = 0;
	r->overlong = false;
	r->fr = FR_START;
	r->rec_line = r->line;
	return rc;
}

static void rec_add(struct api_csv_reader *r, const char *s, size_t n)
{
	if (r->overlong)
		return;
	if (r->rec.len + n > r->max_record) {
		n = r->max_record - r->rec.len;
		r->overlong = true;
	}
	abuf_add(&r->rec, s, n);
}

int api_csv_reader_feed(struct api_csv_reader *r, const char *buf, size_t len,
			api_csv_record_fn fn, void *arg)
{
	size_t i = 0, b = 0;
	int rc;

	if (r->header_rc)
		return r->header_rc;
	while (i < len) {
		char c = buf[i];

		switch (r->fr) {
		case FR_Q:
			/* the fast part: a quoted field's text */
			while (i < len && buf[i] != '"') {
				r->line += buf[i] == '\n';
				i++;
			}
			if (i < len) {
				r->fr = FR_QQ;
				i++;
			}
			continue;
		case FR_QQ:
			if (c == '"') {
				r->fr = FR_Q;
				i++;
				continue;
			}
			/* fall through: after a closing quote */
			r->fr = FR_UNQ;
			if (c != ',' && c != '\n')
				break;
			/* fall through */
		case FR_START:
		case FR_UNQ:
			if (c == '\n') {
				rec_add(r, buf + b, i - b);
				r->line++;
				i++;
				b = i;
				if (r->rec.oom)
					return -ENOMEM;
				rc = take_record(r, fn, arg);
				if (rc)
					return rc;
				continue;
			}
			if (c == ',')
				r->fr = FR_START;
			else if (c == '"' && r->fr == FR_START)
				r->fr = FR_Q;
			else
				r->fr = FR_UNQ;
			break;
		}
		i++;
	}
	rec_add(r, buf + b, i - b);
	return r->rec.oom ? -ENOMEM : 0;
}

int api_csv_reader_end(struct api_csv_reader *r, api_csv_record_fn fn,
		       void *arg)
{
	int rc = 0;

	if (r->header_rc)
		return r->header_rc;
	if (r->rec.len || r->overlong)
		rc = take_record(r, fn, arg);
	if (!rc && !r->have_header)
		rc = header_fail(r, -EINVAL, "no header row");
	return rc;
}

struct to_jsonl {
	struct abuf out;
};

static int to_jsonl_record(void *arg, const struct api_csv_record *rec)
{
	struct to_jsonl *j = arg;

	if (rec->error) {
		log_err("read CSV failed: %s", rec->error);
		return -EINVAL;
	}
	abuf_add(&j->out, rec->row, rec->row_len);
	abuf_addc(&j->out, '\n');
	return j->out.oom ? -ENOMEM : 0;
}

int api_csv_to_jsonl(const struct api_schema *schema, const char *csv,
		     size_t len, char **jsonl, size_t *jsonl_len)
{
	struct api_csv_reader *r = NULL;
	struct to_jsonl j;
	int rc;

	*jsonl = NULL;
	*jsonl_len = 0;
	abuf_init(&j.out);
	rc = api_csv_reader_new(schema, 0, 0, &r);
	if (rc)
		goto out;
	rc = api_csv_reader_feed(r, csv, len, to_jsonl_record, &j);
	if (!rc)
		rc = api_csv_reader_end(r, to_jsonl_record, &j);
	if (rc == -ENOENT)
		rc = -EINVAL;
	if (rc && api_csv_reader_error(r))
		log_err("read CSV failed: %s", api_csv_reader_error(r));
	if (rc)
		goto out;
	abuf_reserve(&j.out, 0);
	*jsonl = abuf_detach(&j.out, jsonl_len);
	if (!*jsonl)
		rc = -ENOMEM;
out:
	api_csv_reader_free(r);
	abuf_release(&j.out);
	return rc;
}

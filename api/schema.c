/*
 * schema.c: schema bodies of both dialects (json-c): cursor
 * {"columns": [...]} and flows JSON Schema {"properties": {...}} ordered by
 * displayOrder, into struct api_schema with schema.json's pretty bytes.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "api_i.h"

/* ---- schemas (json-c) ------------------------------------------------- */

static int type_from_name(const char *s, enum api_type *t)
{
	static const struct {
		const char *name;
		enum api_type type;
	} types[] = {
	    {"string", API_TYPE_STRING},   {"number", API_TYPE_NUMBER},
	    {"integer", API_TYPE_INTEGER}, {"boolean", API_TYPE_BOOLEAN},
	    {"date", API_TYPE_DATE},
	};

	for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
		if (strcmp(s, types[i].name) == 0) {
			*t = types[i].type;
			return 0;
		}
	}
	return -EPROTO;
}

static int schema_cursor_columns(struct json_object *cols,
				 struct api_schema *out)
{
	size_t n = json_object_array_length(cols);

	out->columns = calloc(n ? n : 1, sizeof(*out->columns));
	if (!out->columns)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		struct json_object *c = json_object_array_get_idx(cols, i);
		struct json_object *name, *type, *pk;
		struct api_column *col = &out->columns[i];

		if (!json_object_is_type(c, json_type_object) ||
		    !json_object_object_get_ex(c, "name", &name) ||
		    !json_object_is_type(name, json_type_string) ||
		    !json_object_object_get_ex(c, "type", &type) ||
		    !json_object_is_type(type, json_type_string) ||
		    type_from_name(json_object_get_string(type), &col->type))
			return -EPROTO;
		if (json_object_object_get_ex(c, "isPrimaryKey", &pk)) {
			if (!json_object_is_type(pk, json_type_boolean))
				return -EPROTO;
			col->key = json_object_get_boolean(pk);
		}
		col->name = strdup(json_object_get_string(name));
		if (!col->name)
			return -ENOMEM;
		out->ncolumns = i + 1;
		for (size_t j = 0; j < i; j++)
			if (strcmp(out->columns[j].name, col->name) == 0)
				return -EPROTO;
	}
	return 0;
}

struct flows_prop {
	const char *name;
	int64_t order;
	size_t pos;
	enum api_type type;
	bool key;
};

static int flows_prop_cmp(const void *a, const void *b)
{
	const struct flows_prop *x = a, *y = b;

	/* the key first, whatever its displayOrder */
	if (x->key != y->key)
		return x->key ? -1 : 1;
	if (x->order != y->order)
		return x->order < y->order ? -1 : 1;
	return x->pos < y->pos ? -1 : x->pos > y->pos;
}

/* The production dialect's JSON Schema: properties ordered by displayOrder,
 * the key is the property "key". */
static int schema_flows_properties(struct json_object *props,
				   struct api_schema *out)
{
	size_t n = (size_t)json_object_object_length(props), i = 0;
	struct flows_prop *fp;
	int rc = -EPROTO;

	fp = calloc(n ? n : 1, sizeof(*fp));
	if (!fp)
		return -ENOMEM;
	json_object_object_foreach(props, key, val)
	{
		struct json_object *type, *order;

		if (!json_object_is_type(val, json_type_object) ||
		    !json_object_object_get_ex(val, "type", &type) ||
		    !json_object_is_type(type, json_type_string) ||
		    type_from_name(json_object_get_string(type), &fp[i].type))
			goto out;
		fp[i].name = key;
		fp[i].key = strcmp(key, "key") == 0;
		fp[i].pos = i;
		fp[i].order = INT64_MAX;
		if (json_object_object_get_ex(val, "displayOrder", &order) &&
		    json_object_is_type(order, json_type_int))
			fp[i].order = json_object_get_int64(order);
		i++;
	}
	qsort(fp, n, sizeof(*fp), flows_prop_cmp);
	out->columns = calloc(n ? n : 1, sizeof(*out->columns));
	if (!out->columns) {
		rc = -ENOMEM;
		goto out;
	}
	for (i = 0; i < n; i++) {
		out->columns[i].name = strdup(fp[i].name);
		if (!out->columns[i].name) {
			rc = -ENOMEM;
			goto out;
		}
		out->ncolumns = i + 1;
		out->columns[i].type = fp[i].type;
		out->columns[i].key = fp[i].key;
		if (fp[i].key) {
			/* the platform's limits on a key */
			if (fp[i].type != API_TYPE_STRING)
				goto out;
			out->columns[i].min_chars = 1;
			out->columns[i].max_chars = 256;
		}
	}
	rc = 0;
out:
	free(fp);
	return rc;
}

int api_schema_from_json(const char *json, size_t len, const char *version,
			 struct api_schema *out)
{
	struct json_tokener *tok = NULL;
	struct json_object *root = NULL, *cols;
	const char *pretty;
	size_t plen;
	int rc = -EPROTO;

	memset(out, 0, sizeof(*out));
	if (len > INT32_MAX)
		return -EPROTO;
	tok = json_tokener_new();
	if (!tok)
		return -ENOMEM;
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	root = json_tokener_parse_ex(tok, json, (int)len);
	if (!root || json_tokener_get_error(tok) != json_tokener_success ||
	    (size_t)json_tokener_get_parse_end(tok) != len) {
		/* trailing whitespace is fine */
		size_t end = root ? json_tokener_get_parse_end(tok) : 0;

		if (!root)
			goto out;
		while (end < len && strchr(" \t\r\n", json[end]))
			end++;
		if (end != len)
			goto out;
	}
	if (!json_object_is_type(root, json_type_object))
		goto out;
	if (json_object_object_get_ex(root, "columns", &cols) &&
	    json_object_is_type(cols, json_type_array))
		rc = schema_cursor_columns(cols, out);
	else if (json_object_object_get_ex(root, "properties", &cols) &&
		 json_object_is_type(cols, json_type_object))
		rc = schema_flows_properties(cols, out);
	if (rc)
		goto out;
	pretty = json_object_to_json_string_length(
	    root,
	    JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED |
		JSON_C_TO_STRING_NOSLASHESCAPE,
	    &plen);
	out->json = malloc(plen + 2);
	if (!pretty || !out->json) {
		rc = -ENOMEM;
		goto out;
	}
	memcpy(out->json, pretty, plen);
	out->json[plen] = '\n';
	out->json[plen + 1] = '\0';
	out->json_len = plen + 1;
	if (version) {
		out->version = strdup(version);
		if (!out->version)
			rc = -ENOMEM;
	}
out:
	if (rc)
		api_schema_release(out);
	json_object_put(root);
	json_tokener_free(tok);
	return rc;
}

void api_schema_release(struct api_schema *schema)
{
	if (!schema)
		return;
	for (size_t i = 0; i < schema->ncolumns; i++)
		free(schema->columns[i].name);
	free(schema->columns);
	free(schema->version);
	free(schema->json);
	memset(schema, 0, sizeof(*schema));
}

int api_schema_parse(const char *json, size_t len, const char *version,
		     struct api_schema *out)
{
	int rc = api_schema_from_json(json, len, version, out);

	return rc == -ENOMEM ? rc : rc ? -EPROTO : 0;
}

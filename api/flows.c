/*
 * flows.c: the production dialect (../shared/spec/genesys-flows-api.md and
 * genesys-flows-facts.md): /api/v2/flows/datatables.
 *
 * Not implemented yet: every operation returns -ENOSYS.
 */
#include <errno.h>

#include "api_i.h"

#define FLOWS_MAX_PAGE 500
#define FLOWS_MAX_ROWS 5000

static int flows_list_tables(struct api *api, struct api_table_list *out)
{
	(void)api;
	out->tables = NULL;
	out->count = 0;
	return -ENOSYS;
}

static int flows_get_schema(struct api *api, const char *table_id,
			    struct api_schema *out)
{
	(void)api;
	(void)table_id;
	(void)out;
	return -ENOSYS;
}

static int flows_put_schema(struct api *api, const char *table_id,
			    const char *json, size_t len, const char *if_match,
			    struct api_schema *out)
{
	(void)api;
	(void)table_id;
	(void)json;
	(void)len;
	(void)if_match;
	(void)out;
	return -ENOSYS;
}

static int flows_get_rows(struct api *api, const char *table_id,
			  const struct api_schema *schema, const char *cursor,
			  unsigned page_size, const char *if_none_match,
			  struct api_page *out)
{
	(void)api;
	(void)table_id;
	(void)schema;
	(void)cursor;
	(void)page_size;
	(void)if_none_match;
	(void)out;
	return -ENOSYS;
}

static int flows_upsert(struct api *api, const char *table_id,
			const char *const *rows, size_t nrows,
			struct api_upsert_result *out)
{
	(void)api;
	(void)table_id;
	(void)rows;
	(void)nrows;
	(void)out;
	return -ENOSYS;
}

static int flows_delete_row(struct api *api, const char *table_id,
			    const char *row_id)
{
	(void)api;
	(void)table_id;
	(void)row_id;
	return -ENOSYS;
}

static void flows_get_caps(struct api *api, struct api_caps *out)
{
	(void)api;
	out->numbered_pages = true;
	out->row_ops = true;
	out->csv_jobs = true;
	out->max_page_size = FLOWS_MAX_PAGE;
	out->max_rows = FLOWS_MAX_ROWS;
}

const struct api_dialect api_dialect_flows = {
    .name = "flows",
    .scope = "architect",
    .max_page_size = FLOWS_MAX_PAGE,
    .list_tables = flows_list_tables,
    .get_schema = flows_get_schema,
    .put_schema = flows_put_schema,
    .get_rows = flows_get_rows,
    .upsert = flows_upsert,
    .delete_row = flows_delete_row,
    .get_caps = flows_get_caps,
};

/*
 * export_job: a whole-table read through the production API's export job,
 * with dtfs's own client (api/), as the alternative to parallel pages that
 * issue 10 asks to measure: GET the schema, POST an export job, poll it
 * with api/'s back-off until Succeeded, download the CSV (downloadURI, then
 * the signed URL), convert it with api_csv_to_jsonl() and write the JSONL.
 *
 *     export_job API_URL TABLE_ID OUT
 *
 * Credentials from GENESYSCLOUD_OAUTHCLIENT_ID/SECRET. The token is
 * fetched first and not timed (a mount holds one already). Prints
 * {"rows": N, "seconds": S, "job_seconds": S} on stdout; exit 0, or 1 on
 * any error (logged). Built by meson (tools/meson.build), not installed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "log.h"

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	struct api_config cfg = {.dialect = "flows"};
	struct api_schema schema;
	struct api *api = NULL;
	char *csv = NULL, *jsonl = NULL;
	size_t csv_len = 0, jsonl_len = 0, rows = 0, i;
	double t0, t1, t2;
	FILE *f = NULL;
	int rc, status = 1;
	bool have_schema = false;

	log_init("export_job", LOG_WARNING);
	if (argc != 4) {
		fprintf(stderr, "usage: export_job API_URL TABLE_ID OUT\n");
		return 2;
	}
	cfg.api_url = argv[1];
	cfg.rate_requests = 1000000; /* the bench's budget is the server's */
	cfg.rate_window_s = 60;
	rc = api_new(&cfg, &api);
	if (rc || (rc = api_check(api)))
		goto out;
	t0 = now();
	rc = api_get_schema(api, argv[2], &schema);
	if (rc)
		goto out;
	have_schema = true;
	t1 = now();
	rc = api_export_csv(api, argv[2], &csv, &csv_len);
	if (rc)
		goto out;
	t2 = now();
	rc = api_csv_to_jsonl(&schema, csv, csv_len, &jsonl, &jsonl_len);
	if (rc)
		goto out;
	f = fopen(argv[3], "w");
	if (!f || fwrite(jsonl, 1, jsonl_len, f) != jsonl_len) {
		rc = -errno;
		goto out;
	}
	if (fclose(f)) {
		f = NULL;
		rc = -errno;
		goto out;
	}
	f = NULL;
	for (i = 0; i < jsonl_len; i++)
		rows += jsonl[i] == '\n';
	printf("{\"rows\": %zu, \"seconds\": %.4f, \"job_seconds\": %.4f}\n",
	       rows, now() - t0, t2 - t1);
	status = 0;
out:
	if (status)
		fprintf(stderr, "export_job: %s\n", strerror(rc < 0 ? -rc : EIO));
	if (f)
		fclose(f);
	free(jsonl);
	free(csv);
	if (have_schema)
		api_schema_release(&schema);
	api_free(api);
	return status;
}

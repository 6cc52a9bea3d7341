/*
 * config: the settings of the engine, shared by the mount (dtfs) and
 * dtfsctl, and the one parser of their `-o key=value` words, so both faces
 * accept exactly the same options.
 */
#ifndef DTFS_FS_CONFIG_H
#define DTFS_FS_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

struct fs_config {
	char *api;		/* "cursor", "flows", or NULL: chosen by
				   fs_config_resolve() */
	char *region;
	char *api_url;
	char *login_url;
	char *credentials;
	char *cache_dir;	/* default $XDG_CACHE_HOME/dtfs or ~/.cache/dtfs */
	uint64_t cache_size;	/* bytes of pages kept, 0 = no cap */
	unsigned page_size;	/* rows per page fetched, 1..1000; 0 = the
				   largest the API accepts */
	unsigned chunk_rows;	/* rows per upsert chunk, 1..1000 */
	unsigned upload_workers; /* chunks in flight, 1..32 */
	unsigned revalidate;	/* seconds between revalidations of a table */
	unsigned list_ttl;	/* seconds a table listing stays fresh */
	unsigned max_line;	/* longest import line accepted, bytes */
	unsigned retries;	/* attempts per request */
	unsigned retry_budget;	/* seconds per request, retries included */
	bool ro;
	bool replace;		/* whole-file imports delete what they lack */
	bool lazy_size;		/* no fetch for st_size of rows.jsonl */
	bool allow_delete;	/* rmdir of a table deletes it */
	bool force_delete;	/* … even if in use (flows ?force=true) */

	/* logging (log_file=, log_level=): applied by fs_config_apply_log */
	char *log_file;		/* NULL: stderr, or syslog when daemonized */
	int log_level;		/* LOG_ERR..LOG_DEBUG, -1: the face's default */

	/* ---- dialect, pacing and import routes (the production API) ---- */
	unsigned page_workers;	/* numbered pages in flight, 1..32 */
	unsigned rate_requests;	/* our budget: requests per rate_window */
	unsigned rate_window;	/* seconds; rate_requests 0 = none (pace by
				   the server's rate-limit headers) */
	unsigned job_rows;	/* changed rows from which an import goes as
				   one CSV job; FS_CONFIG_AUTO = by cost */
	unsigned max_rows;	/* rows a table may hold, 0 = no limit */
	bool rate_set, max_rows_set; /* given, not the dialect's default */
};

#define FS_CONFIG_AUTO 0u

/*
 * Settle what depends on several options and the environment, once all
 * words are applied (fs_engine_new does it): the region from
 * GENESYSCLOUD_REGION, the dialect when api= was not given (see
 * fs_config_help), and the dialect's defaults for rate= and max_rows=.
 * Returns 0, -EINVAL (no region and no api_url: logged with how to give
 * one), -ENOMEM.
 */
int fs_config_resolve(struct fs_config *cfg)
	__attribute__((warn_unused_result));

/* Defaults; cache_dir is resolved from the environment. Returns 0 or
 * -ENOMEM. Release with fs_config_release(). */
int fs_config_init(struct fs_config *cfg) __attribute__((warn_unused_result));
void fs_config_release(struct fs_config *cfg);

/*
 * Apply one option word, "key=value" or a flag such as "ro".
 * Returns 0 when it was ours and applied, 1 when it is not a dtfs option
 * (the mount passes it on to FUSE; dtfsctl refuses it), -EINVAL when it is
 * ours but the value is bad (a message is logged), -ENOMEM.
 */
int fs_config_set(struct fs_config *cfg, const char *word)
	__attribute__((warn_unused_result));

/* Apply a comma-separated list of words (dtfsctl's -o). Unknown words are
 * refused with -EINVAL. */
int fs_config_set_list(struct fs_config *cfg, const char *list)
	__attribute__((warn_unused_result));

/* Apply log_file= and log_level= to the logger (ident names the program).
 * Returns 0, or -EINVAL when the log file cannot be opened (logged). */
int fs_config_apply_log(const struct fs_config *cfg, const char *ident)
	__attribute__((warn_unused_result));

/* What a user can do about an error that ends a command or a mount (both
 * faces say the same), or NULL. Static string. */
const char *fs_config_advice(int rc);

/* The help text of the dtfs options, for --help of both faces. */
extern const char fs_config_help[];

#endif

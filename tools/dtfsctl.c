/*
 * dtfsctl: the engine without FUSE, for machines with no /dev/fuse.
 *
 *   dtfsctl [-v|-q] [-d] [-o option[,option]...] ls
 *   dtfsctl [-v|-q] [-d] [-o option[,option]...] schema TABLE [FILE]
 *   dtfsctl [-v|-q] [-d] [-o option[,option]...] create TABLE FILE
 *   dtfsctl [-v|-q] [-d] [-o option[,option]...] export TABLE
 *   dtfsctl [-v|-q] [-d] [-o option[,option]...] import TABLE [FILE]
 *   dtfsctl [-v|-q] [-d] [-o option[,option]...] status TABLE
 *
 * The options are the mount's. export prints exactly the bytes the mount's
 * rows.jsonl shows, through the same cache; import runs the same engine as
 * writing rows.jsonl. Never partial output presented as complete: a failure
 * midway exits non-zero.
 *
 * TABLE is the API's name ("Holidays/2025") or the mount's file name of it
 * ("Holidays%2F2025"). On a terminal (or with -v) export and import show a
 * progress line on stderr and end with a one-line outcome; -q silences
 * both. Exit statuses are sysexits(3) codes, listed in exit_code() and in
 * the table of dtfsctl(1), which tests/integration/test_ops.py checks
 * against each other.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "engine.h"
#include "log.h"
#include "names.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dtfsctl [-v|-q] [-d] [-o option[,option]...] COMMAND "
		"[ARGS]\n\n"
		"commands:\n"
		"    ls                   table names, one a line\n"
		"    schema TABLE         the schema JSON (schema.json's bytes)\n"
		"    schema TABLE FILE    change the schema to FILE's (columns can\n"
		"                         only be added), as writing schema.json\n"
		"    create TABLE FILE    a new table with FILE's schema (flows), as\n"
		"                         mkdir and writing schema.json\n"
		"    export TABLE         rows as JSONL on stdout (rows.jsonl's "
		"bytes)\n"
		"    import TABLE [FILE]  import JSONL lines (stdin by default)\n"
		"    status TABLE         status.json's bytes, with the last "
		"import\n\n"
		"TABLE is the API's name (Holidays/2025) or the mount's "
		"(Holidays%%2F2025).\n\n"
		"    -h, --help     this help\n"
		"    -V, --version  the version\n"
		"    -v, --verbose  progress and outcome even when stderr is not "
		"a terminal\n"
		"    -q, --quiet    no progress or outcome, only errors\n"
		"    -d, --debug    log every HTTP request\n"
		"    -o OPTIONS     the mount's options (below)\n\n"
		"exit status: 0 success; %d usage; %d lines quarantined or "
		"schema drift;\n"
		"%d no such table or FILE unreadable; %d the API cannot be "
		"reached;\n"
		"%d the cache cannot be opened; %d the API kept failing;\n"
		"%d another import is running; %d access refused;\n"
		"1 anything else (see dtfsctl(1)).\n\n%s",
		EX_USAGE, EX_DATAERR, EX_NOINPUT, EX_UNAVAILABLE, EX_CANTCREAT,
		EX_IOERR, EX_TEMPFAIL, EX_NOPERM, fs_config_help);
}

/* The one mapping of results to exit statuses; dtfsctl(1) lists the same
 * (tests/integration/test_ops.py holds them to each other). */
static int exit_code(int rc)
{
	switch (rc) {
	case 0:
		return 0;
	case -EINVAL:		/* quarantined lines or schema drift */
		return EX_DATAERR;
	case -EHOSTUNREACH:	/* connect refused, DNS, circuit open */
		return EX_UNAVAILABLE;
	case -EIO:
	case -ETIMEDOUT:
	case -ESTALE:		/* the table changed during the export */
	case -EPROTO:
		return EX_IOERR;
	case -EACCES:
	case -EROFS:
		return EX_NOPERM;
	case -EBUSY:
		return EX_TEMPFAIL;
	case -ENOENT:
		return EX_NOINPUT;
	default:
		return 1;
	}
}

/* ---- progress ---------------------------------------------------------- */

/*
 * A thread redraws one line on stderr twice a second (a terminal: in place
 * with \r; with -v and no terminal: a line every 2 s) from counters the
 * worker updates; the worker itself never waits for the terminal.
 */
struct progress {
	bool on;		/* show the outcome (and progress) */
	bool lines;		/* show progress lines */
	bool tty;
	const char *verb;	/* "exporting", "importing" */
	const char *table;
	uint64_t total_bytes;	/* 0: unknown */
	atomic_uint_fast64_t bytes, rows;
	struct fs_import *im;	/* import: its counters */
	atomic_bool uploading;
	struct timespec start;
	pthread_t thread;
	bool started;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stop;
	bool drawn;		/* a line is on the terminal, unterminated */
};

static double since(const struct timespec *t0)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - t0->tv_sec) +
	       (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
}

/* "1.2 MB" */
static void human(char *buf, size_t size, double v)
{
	static const char *const unit[] = { "B", "kB", "MB", "GB", "TB" };
	int u = 0;

	while (v >= 1000 && u < 4) {
		v /= 1000;
		u++;
	}
	if (u == 0)
		snprintf(buf, size, "%.0f %s", v, unit[u]);
	else
		snprintf(buf, size, "%.1f %s", v, unit[u]);
}

static void eta(char *buf, size_t size, double done, double total,
		double secs)
{
	double left;

	buf[0] = '\0';
	if (total <= 0 || done <= 0 || secs <= 0 || done > total)
		return;
	left = (total - done) * secs / done;
	snprintf(buf, size, ", %.0f%%, ETA %d:%02d", 100.0 * done / total,
		 (int)left / 60, (int)left % 60);
}

static const char *plural(uint64_t n, const char *one, const char *many)
{
	return n == 1 ? one : many;
}

static void progress_draw(struct progress *p, bool final)
{
	double secs = since(&p->start);
	char line[512], b[32], rate[32], e[64] = "";
	uint64_t bytes = atomic_load(&p->bytes);

	human(b, sizeof(b), (double)bytes);
	human(rate, sizeof(rate), secs > 0 ? (double)bytes / secs : 0);
	struct fs_import_progress ip = { 0 };

	if (p->im)
		fs_import_progress(p->im, &ip);
	if (p->im && atomic_load(&p->uploading) && ip.rows_planned) {
		if (!final)
			eta(e, sizeof(e), (double)ip.rows_landed,
			    (double)ip.rows_planned, secs);
		snprintf(line, sizeof(line),
			 "%s '%s': %" PRIu64 " of %" PRIu64 " %s landed "
			 "(%" PRIu64 " of %" PRIu64 " %s acknowledged)%s",
			 p->verb, p->table, ip.rows_landed, ip.rows_planned,
			 plural(ip.rows_planned, "row", "rows"),
			 ip.chunks_acked, ip.chunks_planned,
			 plural(ip.chunks_planned, "chunk", "chunks"), e);
	} else {
		uint64_t rows = p->im ? ip.valid + ip.quarantined
				      : atomic_load(&p->rows);

		if (!final)
			eta(e, sizeof(e), (double)bytes,
			    (double)p->total_bytes, secs);
		snprintf(line, sizeof(line),
			 "%s '%s': %" PRIu64 " %s, %s, %s/s%s", p->verb,
			 p->table, rows, plural(rows, "row", "rows"), b, rate,
			 e);
	}
	if (p->tty) {
		/* in place; the final state stays on its own line */
		fprintf(stderr, "\r%s\033[K%s", line, final ? "\n" : "");
		p->drawn = !final;
	} else {
		fprintf(stderr, "%s\n", line);
	}
	fflush(stderr);
}

static void *progress_main(void *arg)
{
	struct progress *p = arg;
	struct timespec until;
	long step_ms = p->tty ? 500 : 2000;

	pthread_mutex_lock(&p->lock);
	while (!p->stop) {
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += step_ms * 1000000L;
		until.tv_sec += until.tv_nsec / 1000000000L;
		until.tv_nsec %= 1000000000L;
		pthread_cond_timedwait(&p->cond, &p->lock, &until);
		if (!p->stop)
			progress_draw(p, false);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

static void progress_start(struct progress *p, const char *verb,
			   const char *table)
{
	p->verb = verb;
	p->table = table;
	clock_gettime(CLOCK_MONOTONIC, &p->start);
	if (!p->on || !p->lines)
		return;
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	p->started = pthread_create(&p->thread, NULL, progress_main, p) == 0;
}

/* Stop redrawing; draw the final state unless the command failed (then
 * the error is the last word). */
static void progress_stop(struct progress *p, bool ok)
{
	if (!p->started)
		return;
	pthread_mutex_lock(&p->lock);
	p->stop = true;
	pthread_cond_signal(&p->cond);
	pthread_mutex_unlock(&p->lock);
	pthread_join(p->thread, NULL);
	p->started = false;
	pthread_cond_destroy(&p->cond);
	pthread_mutex_destroy(&p->lock);
	if (ok)
		progress_draw(p, true);
	else if (p->drawn)
		fputs("\r\033[K", stderr);
	p->drawn = false;
}

/* ---- commands ---------------------------------------------------------- */

static int write_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = write(fd, buf, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

static int cmd_ls(struct fs_engine *eng)
{
	struct fs_table **tables;
	size_t i, n;
	int rc = fs_engine_list(eng, &tables, &n);

	if (rc)
		return rc;
	for (i = 0; i < n; i++)
		printf("%s\n", fs_table_name(tables[i]));
	free(tables);
	return fflush(stdout) ? -errno : 0;
}

static int cmd_bytes(struct fs_engine *eng, struct fs_table *t,
		     int (*get)(struct fs_engine *, struct fs_table *, char **,
				size_t *))
{
	char *buf;
	size_t len;
	int rc = get(eng, t, &buf, &len);

	if (rc)
		return rc;
	rc = write_all(STDOUT_FILENO, buf, len);
	free(buf);
	return rc;
}

static size_t count_lines(const char *s, size_t n)
{
	const char *end = s + n;
	size_t k = 0;

	while ((s = memchr(s, '\n', (size_t)(end - s)))) {
		k++;
		s++;
	}
	return k;
}

static int cmd_export(struct fs_engine *eng, struct fs_table *t,
		      struct progress *p)
{
	size_t size = 1 << 20, n;
	struct fs_reader *rd = NULL;
	uint64_t off = 0, total;
	char *buf;
	int rc;

	buf = malloc(size);
	if (!buf)
		return -ENOMEM;
	rc = fs_reader_open(eng, t, &rd);
	if (rc)
		goto out;
	if (fs_reader_complete(rd, &total))
		p->total_bytes = total;
	/* rows on the terminal: a progress line would garble them (curl
	 * does the same); the outcome still comes */
	if (p->tty && isatty(STDOUT_FILENO))
		p->lines = false;
	progress_start(p, "exporting", fs_table_name(t));
	do {
		rc = fs_reader_read(rd, off, buf, size, &n);
		if (!rc)
			rc = write_all(STDOUT_FILENO, buf, n);
		off += n;
		atomic_store(&p->bytes, off);
		atomic_fetch_add(&p->rows, count_lines(buf, n));
	} while (!rc && n > 0);
	progress_stop(p, !rc);
	if (!rc && p->on)
		fprintf(stderr, "exported %" PRIuFAST64 " %s (%" PRIu64
			" bytes) from '%s'\n", atomic_load(&p->rows),
			plural(atomic_load(&p->rows), "row", "rows"), off,
			fs_table_name(t));
out:
	if (rd)
		fs_reader_close(rd);
	free(buf);
	return rc;
}

/* The one-line outcome of an import. */
static void import_outcome(struct fs_engine *eng, struct fs_table *t,
			   struct fs_import *im, int rc, bool on)
{
	struct fs_import_progress ip;
	uint64_t rows, merged, landed;
	char *rejects = NULL, see[1100] = "";

	fs_import_progress(im, &ip);
	rows = ip.valid + ip.quarantined;
	/* rows the table already held as given were not sent: landed too */
	landed = ip.rows_landed + ip.unchanged;
	merged = ip.valid > ip.rows_planned + ip.unchanged ?
		 ip.valid - ip.rows_planned - ip.unchanged : 0;
	if (ip.quarantined) {
		rejects = fs_table_rejects_path(eng, t);
		snprintf(see, sizeof(see), ": see '%s'",
			 rejects ? rejects : "rejects.jsonl");
	}
	if (rc && rc != -EINVAL) {
		/* errors are shown even with -q */
		log_err("import into '%s' failed: %" PRIu64 " of %" PRIu64
			" %s landed, %" PRIu64 " quarantined%s",
			fs_table_name(t), landed, rows,
			plural(rows, "row", "rows"), ip.quarantined, see);
	} else if (rc && ip.drift) {
		log_err("import into '%s' stopped by schema drift: nothing "
			"was sent%s", fs_table_name(t), see);
	} else if (rc) {
		/* the outcome, shown even with -q: it explains exit 65 */
		fprintf(stderr, "imported %" PRIu64 " %s into '%s' (%" PRIu64
			" landed, %" PRIu64 " quarantined%s)\n", rows,
			plural(rows, "row", "rows"), fs_table_name(t),
			landed, ip.quarantined, see);
	} else if (on) {
		char tail[160] = "";
		int n = 0;

		if (ip.unchanged)
			n = snprintf(tail, sizeof(tail),
				     ", %" PRIu64 " of them unchanged",
				     ip.unchanged);
		if (merged && n >= 0 && (size_t)n < sizeof(tail))
			snprintf(tail + n, sizeof(tail) - (size_t)n,
				 ", %" PRIu64 " repeated %s merged", merged,
				 plural(merged, "key", "keys"));
		fprintf(stderr, "imported %" PRIu64 " %s into '%s' (%" PRIu64
			" landed%s)\n", rows, plural(rows, "row", "rows"),
			fs_table_name(t), landed, tail);
	}
	free(rejects);
}

/* *told: the outcome (or the failure) was reported here. */
static int cmd_import(struct fs_engine *eng, struct fs_table *t,
		      const char *file, struct progress *p, bool *told)
{
	struct fs_import *im = NULL;
	char *buf;
	size_t size = 1 << 16;
	int fd = STDIN_FILENO, rc, frc;
	struct stat st;
	ssize_t n;

	if (file && strcmp(file, "-")) {
		fd = open(file, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			rc = -errno;
			log_err("cannot open the import file '%s': %s",
				file, strerror(-rc));
			*told = true;
			/* a missing input is EX_NOINPUT; so is an unreadable
			 * one (sysexits(3)) */
			return rc == -EACCES ? -ENOENT : rc;
		}
	}
	if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode))
		p->total_bytes = (uint64_t)st.st_size;
	buf = malloc(size);
	if (!buf) {
		rc = -ENOMEM;
		goto out;
	}
	rc = fs_import_begin(eng, t, &im);
	if (rc)
		goto out;
	/* a whole file: with -o replace the table becomes equal to it */
	fs_import_set_replace(im, fs_engine_config(eng)->replace);
	p->im = im;
	progress_start(p, "importing", fs_table_name(t));
	while (!rc) {
		n = read(fd, buf, size);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = -errno;
			log_err("cannot read the import for '%s': %s",
				fs_table_name(t), strerror(errno));
			break;
		}
		if (n == 0)
			break;
		atomic_fetch_add(&p->bytes, (uint64_t)n);
		rc = fs_import_write(im, buf, (size_t)n);
	}
	atomic_store(&p->uploading, true);
	/* a read error sends nothing; drift has already stopped the import */
	if (!rc || rc == -EINVAL) {
		frc = fs_import_finish(im);
		if (!rc)
			rc = frc;
	}
	progress_stop(p, !rc || rc == -EINVAL);
	import_outcome(eng, t, im, rc, p->on);
	*told = true;
	fs_import_end(im);
out:
	free(buf);
	if (fd != STDIN_FILENO)
		close(fd);
	return rc;
}

/* schema TABLE FILE, create TABLE FILE: the schema.json writes. */
static int cmd_schema_write(struct fs_engine *eng, struct fs_table *t,
			    const char *name, const char *file)
{
	char *buf = NULL;
	size_t len;
	int fd = open(file, O_RDONLY | O_CLOEXEC), rc;

	rc = fd < 0 ? -errno : fs_schema_read_fd(fd, &buf, &len);
	if (fd >= 0)
		close(fd);
	if (rc) {
		log_err("cannot read '%s': %s", file, strerror(-rc));
		return rc;
	}
	rc = t ? fs_table_put_schema(eng, t, buf, len)
	       : fs_engine_create(eng, name, buf, len, NULL);
	free(buf);
	return rc;
}

/* The table named as the API spells it, or as the mount shows it
 * ("Holidays%2F2025"); the API's spelling wins when both exist. */
static int lookup(struct fs_engine *eng, const char *name,
		  struct fs_table **t)
{
	char decoded[1024];
	int rc = fs_engine_lookup(eng, name, t);

	if (rc == -ENOENT && strchr(name, '%') &&
	    !fs_name_decode(name, decoded, sizeof(decoded)))
		rc = fs_engine_lookup(eng, decoded, t);
	if (rc == -ENOENT)
		log_err("no table named '%s' (dtfsctl ls lists them)", name);
	return rc;
}

static const struct {
	const char *name;
	int min, max;
	const char *args;
} commands[] = {
	{ "ls", 0, 0, "" },
	{ "schema", 1, 2, " TABLE [FILE]" },
	{ "create", 2, 2, " TABLE FILE" },
	{ "export", 1, 1, " TABLE" },
	{ "import", 1, 2, " TABLE [FILE]" },
	{ "status", 1, 1, " TABLE" },
};

/* Check the command and its argument count; the message says what the
 * command takes. Returns 0 or -EINVAL (a usage error). */
static int check_command(const char *cmd, int nargs)
{
	size_t i;

	for (i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(cmd, commands[i].name))
			continue;
		if (nargs >= commands[i].min && nargs <= commands[i].max)
			return 0;
		fprintf(stderr, "dtfsctl: '%s' takes %s, not %d "
			"(usage: dtfsctl %s%s)\n", cmd,
			commands[i].min != commands[i].max ?
				"1 or 2 arguments" :
			commands[i].min == 2 ? "2 arguments" :
			commands[i].min ? "1 argument" : "no arguments",
			nargs, cmd, commands[i].args);
		return -EINVAL;
	}
	fprintf(stderr, "dtfsctl: unknown command '%s' (commands: ls, schema, "
		"create, export, import, status; see dtfsctl --help)\n", cmd);
	return -EINVAL;
}

int main(int argc, char *argv[])
{
	static const struct option longopts[] = {
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ "verbose", no_argument, NULL, 'v' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "debug", no_argument, NULL, 'd' },
		{ NULL, 0, NULL, 0 }
	};
	struct fs_engine *eng = NULL;
	struct fs_table *t = NULL;
	struct progress p = { 0 };
	struct fs_config cfg;
	int verbose = 0, quiet = 0, opt, rc, nargs;
	bool told = false;
	const char *cmd, *what = NULL;

	log_init("dtfsctl", LOG_WARNING);
	if (fs_config_init(&cfg)) {
		fprintf(stderr, "dtfsctl: out of memory\n");
		return 1;
	}
	while ((opt = getopt_long(argc, argv, "+o:dhVvq", longopts, NULL)) !=
	       -1) {
		switch (opt) {
		case 'o':
			rc = fs_config_set_list(&cfg, optarg);
			if (rc) {
				fprintf(stderr, "dtfsctl: bad -o '%s' (see "
					"dtfsctl --help)\n", optarg);
				goto usage_error;
			}
			break;
		case 'd':
			log_init("dtfsctl", LOG_DEBUG);
			break;
		case 'v':
			verbose = 1;
			break;
		case 'q':
			quiet = 1;
			break;
		case 'h':
			usage(stdout);
			rc = 0;
			goto out;
		case 'V':
			printf("dtfsctl %s\n", DTFS_VERSION);
			rc = 0;
			goto out;
		default:
			fprintf(stderr, "dtfsctl: see dtfsctl --help\n");
			goto usage_error;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		goto usage_error;
	}
	cmd = argv[optind];
	nargs = argc - optind - 1;
	if (check_command(cmd, nargs))
		goto usage_error;
	if (fs_config_apply_log(&cfg, "dtfsctl"))
		goto usage_error;
	p.tty = isatty(STDERR_FILENO);
	p.on = !quiet && (verbose || p.tty);
	p.lines = true;

	rc = fs_engine_new(&cfg, &eng);
	if (rc == -EINVAL)	/* bad settings or no credentials: logged */
		goto usage_error;
	if (rc)
		goto out;
	rc = fs_engine_start(eng);
	if (rc) {
		/* the cache: its message is logged; not the API's fault */
		log_err("check cache_dir= (it must be a directory dtfsctl "
			"may create and write)");
		fs_engine_free(eng);
		fs_config_release(&cfg);
		return EX_CANTCREAT;
	}
	if (nargs >= 1 && !strcmp(cmd, "create")) {
		what = argv[optind + 1];
	} else if (nargs >= 1) {
		what = argv[optind + 1];
		rc = lookup(eng, what, &t);
		if (rc)
			goto fail;
		what = fs_table_name(t);
	}
	if (!strcmp(cmd, "ls"))
		rc = cmd_ls(eng);
	else if (!strcmp(cmd, "schema") && nargs == 2)
		rc = cmd_schema_write(eng, t, NULL, argv[optind + 2]);
	else if (!strcmp(cmd, "create"))
		rc = cmd_schema_write(eng, NULL, what, argv[optind + 2]);
	else if (!strcmp(cmd, "schema"))
		rc = cmd_bytes(eng, t, fs_table_schema_json);
	else if (!strcmp(cmd, "status"))
		rc = cmd_bytes(eng, t, fs_table_status_json);
	else if (!strcmp(cmd, "export"))
		rc = cmd_export(eng, t, &p);
	else
		rc = cmd_import(eng, t, nargs == 2 ? argv[optind + 2] : NULL,
				&p, &told);
fail:
	/* an import states its own outcome; a missing table is logged */
	if (rc && !told && rc != -ENOENT) {
		const char *a = fs_config_advice(rc);

		log_err("%s%s%s%s failed: %s%s%s", cmd, what ? " '" : "",
			what ? what : "", what ? "'" : "", strerror(-rc),
			a ? "; " : "", a ? a : "");
	} else if (rc && told && rc != -EINVAL && fs_config_advice(rc)) {
		log_err("%s", fs_config_advice(rc));
	}
	goto out;
usage_error:
	fs_engine_free(eng);
	fs_config_release(&cfg);
	return EX_USAGE;
out:
	fs_engine_free(eng);
	fs_config_release(&cfg);
	return exit_code(rc);
}

/*
 * dtfs: mount the Data Tables of a Genesys Cloud organisation (or of
 * dtfs-emu) as directories. Option handling follows sshfs: dtfs's own -o
 * words go to the engine's one parser (config.c), fstab-only words are
 * dropped, everything else is passed to libfuse.
 */
#include "fs.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <fuse_lowlevel.h>

#include "config.h"
#include "engine.h"
#include "log.h"

enum {
	KEY_HELP,
	KEY_VERSION,
};

struct ctx {
	struct fs_config cfg;
	char *nonopt[2];	/* [SOURCE] MOUNTPOINT */
	int nnonopt;
	int bad;
	int help;
	int version;
	int allow_other;
	int default_permissions;
};

static const struct fuse_opt dtfs_opts[] = {
	FUSE_OPT_KEY("-h", KEY_HELP),
	FUSE_OPT_KEY("--help", KEY_HELP),
	FUSE_OPT_KEY("-V", KEY_VERSION),
	FUSE_OPT_KEY("--version", KEY_VERSION),
	FUSE_OPT_END
};

static int is_fstab_word(const char *arg)
{
	static const char *const words[] = {
		"_netdev", "noauto", "auto", "user", "users", "nouser",
		"nofail", "defaults", "rw", NULL
	};
	int i;

	if (!strncmp(arg, "x-", 2) || !strncmp(arg, "comment=", 8))
		return 1;
	for (i = 0; words[i]; i++)
		if (!strcmp(arg, words[i]))
			return 1;
	return 0;
}

/* A timeout option ("attr_timeout=T"): note the user's value for fs_init
 * (which would otherwise set dtfs's) and let libfuse parse it too.
 * Returns 1 (keep it), 0 (not one) or -1 (a bad value, logged). */
static int timeout_opt(const char *arg)
{
	static const struct {
		const char *key;
		double *dst;
	} keys[] = {
		{ "attr_timeout=", &fs_face_opts.attr_timeout },
		{ "entry_timeout=", &fs_face_opts.entry_timeout },
		{ "negative_timeout=", &fs_face_opts.negative_timeout },
	};
	size_t i, n;
	char *end;
	double v;

	for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		n = strlen(keys[i].key);
		if (strncmp(arg, keys[i].key, n))
			continue;
		errno = 0;
		v = strtod(arg + n, &end);
		if (errno || end == arg + n || *end || !(v >= 0) || v > 86400) {
			log_err("option '%.*s': '%s' is not a number of "
				"seconds in 0..86400", (int)n - 1, arg,
				arg + n);
			return -1;
		}
		*keys[i].dst = v;
		return 1;
	}
	return 0;
}

/* The FUSE options dtfs handles itself. Returns 1 (pass it to libfuse),
 * 0 (consumed), -1 (refused, logged), 2 (not one of them). */
static int fuse_word(struct ctx *ctx, const char *arg)
{
	char *end;
	long m;
	int rc;

	if (!strcmp(arg, "allow_other")) {
		ctx->allow_other = 1;
		return 1;
	}
	if (!strcmp(arg, "default_permissions")) {
		ctx->default_permissions = 1;
		return 1;
	}
	if (!strcmp(arg, "kernel_cache") || !strcmp(arg, "auto_cache")) {
		log_err("option '%s' is refused: dtfs lets the kernel keep a "
			"file's pages only while the table's version is "
			"unchanged, and that would serve stale rows after a "
			"change", arg);
		return -1;
	}
	if (!strncmp(arg, "umask=", 6)) {
		errno = 0;
		m = strtol(arg + 6, &end, 8);
		if (errno || end == arg + 6 || *end || m < 0 || m > 0777) {
			log_err("option 'umask': '%s' is not an octal mode",
				arg + 6);
			return -1;
		}
		/* applied by fs_getattr to dtfs's modes; libfuse's would
		 * replace them (and make data files look executable) */
		fs_face_opts.umask = (mode_t)m;
		return 0;
	}
	rc = timeout_opt(arg);
	return rc == 0 ? 2 : rc;
}

static int opt_proc(void *data, const char *arg, int key,
		    struct fuse_args *out)
{
	struct ctx *ctx = data;
	int rc;

	(void)out;
	switch (key) {
	case KEY_HELP:
		ctx->help = 1;
		return 1; /* fuse_parse_cmdline wants to see it too */
	case KEY_VERSION:
		ctx->version = 1;
		return 0;
	case FUSE_OPT_KEY_OPT:
		if (is_fstab_word(arg))
			return 0;
		rc = fuse_word(ctx, arg);
		if (rc < 0)
			ctx->bad = 1;
		if (rc != 2)
			return rc < 0 ? 0 : rc;
		rc = fs_config_set(&ctx->cfg, arg);
		if (rc < 0) {
			ctx->bad = 1;
			return 0;
		}
		/* "ro" is ours and the kernel's: keep it for the mount too */
		if (rc == 0 && !strcmp(arg, "ro"))
			return 1;
		return rc;
	case FUSE_OPT_KEY_NONOPT:
		/* mount(8) and fstab call "dtfs SOURCE MOUNTPOINT -o …": the
		 * source is a label (say "dtfs" or the org's name) */
		if (ctx->nnonopt == 2) {
			fprintf(stderr, "dtfs: unexpected argument '%s'\n", arg);
			ctx->bad = 1;
			return 0;
		}
		ctx->nonopt[ctx->nnonopt] = strdup(arg);
		if (!ctx->nonopt[ctx->nnonopt])
			ctx->bad = 1;
		ctx->nnonopt++;
		return 0;
	default:
		return 1;
	}
}

static void usage(const char *prog)
{
	printf("usage: %s [-f] [-d] [-o option[,option]...] [SOURCE] "
	       "MOUNTPOINT\n\n"
	       "Mount Genesys Cloud Data Tables: one directory per table with\n"
	       "schema.json, rows.jsonl (read = export, write = import),\n"
	       "rejects.jsonl and status.json. Unmount with fusermount3 -u.\n"
	       "SOURCE (given by mount(8) and /etc/fstab) is only a label.\n\n"
	       "    -h, --help     this help\n"
	       "    -V, --version  the version\n"
	       "    -f             stay in the foreground, log to stderr\n"
	       "    -d             debug: foreground, verbose log\n\n"
	       "SIGHUP makes the next ls walk the table listing again and the\n"
	       "next open of every file revalidate.\n\n%s\n",
	       prog, fs_config_help);
	printf("FUSE options (with the values dtfs uses):\n"
	       "    -o allow_other         let every user in (default_permissions is\n"
	       "                           then added: the kernel checks the modes)\n"
	       "    -o allow_root          let root in\n"
	       "    -o default_permissions the kernel checks the modes\n"
	       "    -o auto_unmount        unmount when dtfs ends\n"
	       "    -o uid=N, gid=N        owner shown (default: the mounting user)\n"
	       "    -o umask=M             taken from dtfs's modes (default 000:\n"
	       "                           the root 0555, table directories 0755,\n"
	       "                           rows.jsonl 0644 (0555 and 0444 with ro),\n"
	       "                           other files 0444)\n"
	       "    -o entry_timeout=T     cache names T seconds (%.1f)\n"
	       "    -o negative_timeout=T  cache missing names T seconds (%.1f)\n"
	       "    -o attr_timeout=T      cache attributes T seconds (%.1f)\n"
	       "    -o kernel_cache, auto_cache  refused: the kernel keeps a file's\n"
	       "                           pages only while its table is unchanged\n"
	       "    -o max_threads=N       most FUSE worker threads (64)\n"
	       "    -o max_idle_threads=N  idle worker threads kept\n"
	       "    -o clone_fd            one /dev/fuse descriptor per thread\n",
	       fs_face_opts.entry_timeout, fs_face_opts.negative_timeout,
	       fs_face_opts.attr_timeout);
}

static struct fs_engine *hup_engine;

/* SIGHUP: drop the listing and revalidate every table on its next open
 * (rclone and s3fs use SIGHUP the same way). */
static void on_hup(int sig)
{
	(void)sig;
	if (hup_engine)
		fs_engine_expire(hup_engine);
}

static void fuse_log_to_ours(enum fuse_log_level level, const char *fmt,
			     va_list ap)
{
	log_vmsg((int)level, fmt, ap);
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct fuse_cmdline_opts opts = { 0 };
	struct fuse_loop_config *loop = NULL;
	struct fs_engine *eng = NULL;
	struct fuse *fuse = NULL;
	struct ctx ctx = { 0 };
	int rc, ret = 1, mounted = 0;

	log_init("dtfs", LOG_NOTICE);
	if (fs_config_init(&ctx.cfg)) {
		fprintf(stderr, "dtfs: out of memory\n");
		return 1;
	}
	if (fuse_opt_parse(&args, &ctx, dtfs_opts, opt_proc) == -1 ||
	    ctx.bad)
		goto out;
	if (ctx.version) {
		printf("dtfs %s (libfuse %s)\n", DTFS_VERSION,
		       fuse_pkgversion());
		ret = 0;
		goto out;
	}
	if (ctx.nnonopt &&
	    fuse_opt_add_arg(&args, ctx.nonopt[ctx.nnonopt - 1]) != 0)
		goto out;
	if (fuse_parse_cmdline(&args, &opts) != 0)
		goto out;
	if (ctx.help || opts.show_help) {
		usage(argv[0]);
		ret = 0;
		goto out;
	}
	if (!opts.mountpoint) {
		fprintf(stderr, "dtfs: no mount point given (see dtfs --help)\n");
		goto out;
	}
	if (fs_config_apply_log(&ctx.cfg, "dtfs"))
		goto out;
	if (opts.debug)
		log_init("dtfs", LOG_DEBUG);
	fuse_set_log_func(fuse_log_to_ours);
	/* with allow_other and no permission checks, any local user could
	 * import rows with the mount owner's credentials */
	if (ctx.allow_other && !ctx.default_permissions) {
		if (fuse_opt_add_arg(&args, "-odefault_permissions"))
			goto out;
		log_info("allow_other: default_permissions added");
	}

	/* everything that can fail is checked before the mount appears */
	rc = fs_engine_new(&ctx.cfg, &eng);
	if (rc)
		goto out;
	rc = fs_engine_check(eng);
	if (rc) {
		/* what failed is logged above (with the host); say what to do,
		 * not a guess ("cannot reach" after a refused secret) */
		const char *a = fs_config_advice(rc);

		log_err("not mounted: %s", a ? a : strerror(-rc));
		goto out;
	}
	rc = fs_engine_start(eng);
	if (rc)
		goto out;
	/* LMDB and threads do not survive fork(): start again after it */
	fs_engine_stop(eng);

	fuse = fuse_new(&args, &fs_ops, sizeof(fs_ops), eng);
	if (!fuse)
		goto out;
	if (fuse_mount(fuse, opts.mountpoint) != 0)
		goto out;
	mounted = 1;
	if (fuse_daemonize(opts.foreground) != 0)
		goto out;
	if (!opts.foreground)
		log_use_syslog();
	if (fs_engine_start(eng))
		goto out;
	/* before libfuse's handlers, which leave a handled SIGHUP alone */
	hup_engine = eng;
	{
		struct sigaction sa = { .sa_handler = on_hup };

		sigemptyset(&sa.sa_mask);
		sa.sa_flags = SA_RESTART;
		if (sigaction(SIGHUP, &sa, NULL) != 0)
			goto out;
	}
	if (fuse_set_signal_handlers(fuse_get_session(fuse)) != 0)
		goto out;

	if (opts.singlethread) {
		rc = fuse_loop(fuse);
	} else {
		loop = fuse_loop_cfg_create();
		if (!loop)
			goto out;
		/* every blocking HTTP call pins a worker: allow many */
		fuse_loop_cfg_set_max_threads(loop, opts.max_threads > 64 ?
						    opts.max_threads : 64);
		if (opts.max_idle_threads != UINT_MAX)
			fuse_loop_cfg_set_idle_threads(loop,
						       opts.max_idle_threads);
		fuse_loop_cfg_set_clone_fd(loop, opts.clone_fd);
		rc = fuse_loop_mt(fuse, loop);
	}
	fuse_remove_signal_handlers(fuse_get_session(fuse));
	ret = rc ? 1 : 0;
out:
	if (loop)
		fuse_loop_cfg_destroy(loop);
	if (fuse) {
		if (mounted)
			fuse_unmount(fuse);
		fuse_destroy(fuse);
	}
	fs_engine_free(eng);
	free(opts.mountpoint);
	fuse_opt_free_args(&args);
	free(ctx.nonopt[0]);
	free(ctx.nonopt[1]);
	fs_config_release(&ctx.cfg);
	return ret;
}

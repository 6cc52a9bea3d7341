/*
 * dtfsctl: the engine without FUSE, for machines with no /dev/fuse.
 *
 *   dtfsctl [-o option[,option]...] ls
 *   dtfsctl [-o option[,option]...] schema TABLE
 *   dtfsctl [-o option[,option]...] export TABLE
 *   dtfsctl [-o option[,option]...] import TABLE [FILE]
 *   dtfsctl [-o option[,option]...] status TABLE
 *
 * The options are the mount's. export prints exactly the bytes the mount's
 * rows.jsonl shows, through the same cache; import runs the same engine as
 * writing rows.jsonl. Never partial output presented as complete: a failure
 * midway exits non-zero.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>
#include <unistd.h>

#include "config.h"
#include "engine.h"
#include "log.h"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dtfsctl [-d] [-o option[,option]...] COMMAND [ARGS]\n\n"
		"commands:\n"
		"    ls                   table names, one a line\n"
		"    schema TABLE         the schema JSON (schema.json's bytes)\n"
		"    export TABLE         rows as JSONL on stdout (rows.jsonl's bytes)\n"
		"    import TABLE [FILE]  import JSONL lines (stdin by default)\n"
		"    status TABLE         status.json's bytes\n\n"
		"exit status: 0 success; %d lines quarantined or schema drift "
		"(see the log);\n"
		"%d the API kept failing; %d access refused; %d another import "
		"is running;\n"
		"%d no such table; 1 anything else.\n\n%s",
		EX_DATAERR, EX_IOERR, EX_NOPERM, EX_TEMPFAIL, EX_NOINPUT,
		fs_config_help);
}

static int exit_code(int rc)
{
	switch (rc) {
	case 0:
		return 0;
	case -EINVAL:
		return EX_DATAERR;
	case -EIO:
	case -ETIMEDOUT:
	case -ENOTCONN:
	case -ESTALE:
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

static int cmd_export(struct fs_engine *eng, struct fs_table *t)
{
	size_t size = 1 << 20, n;
	struct fs_reader *rd;
	uint64_t off = 0;
	char *buf;
	int rc;

	buf = malloc(size);
	if (!buf)
		return -ENOMEM;
	rc = fs_reader_open(eng, t, &rd);
	if (rc)
		goto out;
	do {
		rc = fs_reader_read(rd, off, buf, size, &n);
		if (!rc)
			rc = write_all(STDOUT_FILENO, buf, n);
		off += n;
	} while (!rc && n > 0);
	fs_reader_close(rd);
out:
	free(buf);
	return rc;
}

static int cmd_import(struct fs_engine *eng, struct fs_table *t,
		      const char *file)
{
	struct fs_import *im;
	char *buf;
	size_t size = 1 << 16;
	int fd = STDIN_FILENO, rc, frc;
	ssize_t n;

	if (file && strcmp(file, "-")) {
		fd = open(file, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			rc = -errno;
			log_err("cannot open '%s': %s", file, strerror(-rc));
			return rc;
		}
	}
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
	while (!rc) {
		n = read(fd, buf, size);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			rc = -errno;
			log_err("cannot read the import: %s", strerror(errno));
			break;
		}
		if (n == 0)
			break;
		rc = fs_import_write(im, buf, (size_t)n);
	}
	/* a read error sends nothing; drift has already stopped the import */
	if (!rc || rc == -EINVAL) {
		frc = fs_import_finish(im);
		if (!rc)
			rc = frc;
	}
	fs_import_end(im);
out:
	free(buf);
	if (fd != STDIN_FILENO)
		close(fd);
	return rc;
}

int main(int argc, char *argv[])
{
	struct fs_engine *eng = NULL;
	struct fs_table *t = NULL;
	struct fs_config cfg;
	const char *cmd;
	int opt, rc, nargs;

	log_init("dtfsctl", LOG_WARNING);
	if (fs_config_init(&cfg)) {
		fprintf(stderr, "dtfsctl: out of memory\n");
		return 1;
	}
	while ((opt = getopt(argc, argv, "+o:dhV")) != -1) {
		switch (opt) {
		case 'o':
			if (fs_config_set_list(&cfg, optarg)) {
				rc = -EINVAL;
				goto out;
			}
			break;
		case 'd':
			log_init("dtfsctl", LOG_DEBUG);
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
			usage(stderr);
			rc = -EINVAL;
			goto out;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		rc = -EINVAL;
		goto out;
	}
	cmd = argv[optind];
	nargs = argc - optind - 1;
	if (!(!strcmp(cmd, "ls") && nargs == 0) &&
	    !((!strcmp(cmd, "schema") || !strcmp(cmd, "export") ||
	       !strcmp(cmd, "status")) && nargs == 1) &&
	    !(!strcmp(cmd, "import") && (nargs == 1 || nargs == 2))) {
		log_err("bad command line: '%s' with %d argument(s) (see "
			"dtfsctl -h)", cmd, nargs);
		rc = -EINVAL;
		goto out;
	}

	rc = fs_engine_new(&cfg, &eng);
	if (rc)
		goto out;
	rc = fs_engine_start(eng);
	if (rc)
		goto out;
	if (nargs >= 1) {
		rc = fs_engine_lookup(eng, argv[optind + 1], &t);
		if (rc == -ENOENT)
			log_err("no table named '%s'", argv[optind + 1]);
		if (rc)
			goto out;
	}
	if (!strcmp(cmd, "ls"))
		rc = cmd_ls(eng);
	else if (!strcmp(cmd, "schema"))
		rc = cmd_bytes(eng, t, fs_table_schema_json);
	else if (!strcmp(cmd, "status"))
		rc = cmd_bytes(eng, t, fs_table_status_json);
	else if (!strcmp(cmd, "export"))
		rc = cmd_export(eng, t);
	else
		rc = cmd_import(eng, t, nargs == 2 ? argv[optind + 2] : NULL);
	if (rc && rc != -EINVAL) {
		log_err("%s failed: %s", cmd, strerror(-rc));
	} else if (rc && !strcmp(cmd, "import") && t) {
		/* the mount shows them as TABLE/rejects.jsonl; here, name the
		 * file, or nobody finds it in the cache directory */
		char *rejects = fs_table_rejects_path(eng, t);

		log_err("import: lines were quarantined or the import hit "
			"schema drift: see '%s'",
			rejects ? rejects : "rejects.jsonl");
		free(rejects);
	} else if (rc) {
		log_err("%s: %s", cmd, strerror(-rc));
	}
out:
	fs_engine_free(eng);
	fs_config_release(&cfg);
	return exit_code(rc);
}

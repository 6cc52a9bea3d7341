/*
 * fs: the FUSE face of the engine. Only fs/ops.c and fs/main.c include
 * fuse.h; everything they do to tables goes through engine.h.
 */
#ifndef DTFS_FS_FS_H
#define DTFS_FS_FS_H

#define FUSE_USE_VERSION 314
#include <fuse.h>

#include <sys/types.h>

/* The operations table; private_data is the struct fs_engine. */
extern const struct fuse_operations fs_ops;

/*
 * What the kernel is told, set by main.c from the command line before the
 * mount: the cache timeouts (the user's, else dtfs's defaults, which
 * fs_init applies) and the umask dtfs applies to its modes itself (libfuse's
 * umask= would replace the permission bits and make data files look
 * executable).
 */
struct fs_face_opts {
	double entry_timeout;
	double attr_timeout;
	double negative_timeout;
	mode_t umask;
};
extern struct fs_face_opts fs_face_opts;

#define FS_DEFAULT_TIMEOUT 1.0

#endif

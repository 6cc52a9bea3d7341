/*
 * fs: the FUSE face of the engine. Only fs/ops.c and fs/main.c include
 * fuse.h; everything they do to tables goes through engine.h.
 */
#ifndef DTFS_FS_FS_H
#define DTFS_FS_FS_H

#define FUSE_USE_VERSION 314
#include <fuse.h>

/* The operations table; private_data is the struct fs_engine. */
extern const struct fuse_operations fs_ops;

#endif

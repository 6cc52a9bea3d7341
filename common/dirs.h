/*
 * dirs: directories dtfs keeps its own files in (the cache directory, its
 * rejects/ and scratch/), made again when something removed them while
 * dtfs runs (a cleanup of ~/.cache or /var/cache): a write should not
 * fail with ENOENT because a housekeeping job ran.
 */
#ifndef DTFS_COMMON_DIRS_H
#define DTFS_COMMON_DIRS_H

/* mkdir -p with mode 0700 for each directory made (existing ones are left
 * as they are). Returns 0 or a negative errno. */
int dirs_make(const char *dir);

#endif

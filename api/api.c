/* placeholder: being written */ extern int dtfs_placeholder_api;

"""The filesystem core: namespace, handles, read path. No pyfuse3 here: the FUSE adapter
(`wsfuse.fuse_ops`) translates; everything else can be driven from tests directly."""

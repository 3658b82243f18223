"""Media sets: cut a bundle's content stream into signed parts, check them, join them.

Modules: ``split`` (connected side), ``check`` and ``join`` (site side), and
``parts``, what they share (part names, the signed layout, the content stream,
the metadata copy). Files are opened through ``appliance.safe_fs``.

Job
    ``split_bundle`` writes a bundle as numbered part files plus a copy of its
    (tiny) ``metadata/``, so it fits removable media with file-size limits.
    ``check_parts`` finds the parts of one set across several directories (one
    per medium, any order) and names every missing, damaged, stray or foreign
    part at once. ``join_parts`` rebuilds the bundle directory from a set.

The content stream is the bytes of every file under ``files/`` concatenated in
manifest order: the order of ``records`` as given, which must be the order the
build copied and hashed them. Part boundaries and digests (``Payload.media``)
are computed at build time and signed, so signers approve the part digests.

Invariants
- A part is trusted only through its signed SHA-256. Split hashes each part as
  it writes it and refuses to produce one that differs (a damaged source never
  yields a part set that looks fine). Join checks the whole set first, then
  hashes each part again while applying it: the bytes used are the bytes hashed.
- Split never leaves a complete-looking bad part: a part is written under a
  dot-name and renamed only once its digest matched; on failure it removes
  everything it wrote.
- Join writes only inside ``.<out>.joining`` next to ``out_dir`` and, last,
  renames that to ``out_dir``. Every record path passes ``check_relpath``,
  files are created with O_EXCL|O_NOFOLLOW and directories are walked by file
  descriptor without following links, so nothing lands outside the staging dir.
- Join is resumable: a journal in the staging dir lists the parts fully applied
  (data fsynced) with their digests; a rerun continues after them. A journal or
  staging tree that does not match the current layout is discarded.
- Memory stays flat: data flows through one reusable buffer (per thread).
- A joined directory is not trusted by itself: the verifier checks it against
  the signed manifest like any other bundle before anything is installed.
"""

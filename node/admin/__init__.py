"""The admin use cases, shared by the CLI, the admin API and the admin pages.

One module per use case; the edges (`spinexr.node.cli`, `spinexr.node.http.admin.api`,
`spinexr.node.http.admin.pages`, ``doctor`` and ``/readyz``) only parse, call and render:

- `studies`: search studies, one study with its jobs, results and timeline;
- `jobs`: list and show jobs, their state moves, the queue status, the failures list;
- `actions`: retry, cancel, complete a study: the state move, the actor in the timeline,
  the queue message;
- `destinations`: destinations without secrets, and their test (C-ECHO or QIDO-RS);
- `secrets`: the effective settings with secrets masked, and the values to redact;
- `errors`: not found / conflict / unprocessable, which each edge translates.

The C-ECHO itself is `spinexr.node.dimse.scu.echo` (the node's one SCU module).
"""

"""chatpipe: the command line, the top driver (chatpipe → flows → tasks → model → kernels)."""

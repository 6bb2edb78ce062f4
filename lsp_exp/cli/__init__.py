"""The entry points: lsp-train, lsp-bootstrap, lsp-eval, lsp-report."""

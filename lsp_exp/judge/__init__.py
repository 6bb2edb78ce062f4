"""The self-quality judge of full LSP: templates, reply parsing, batched judging, judging the judges."""

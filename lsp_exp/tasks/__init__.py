"""Tasks: what a game is played on (the Challenger's prompt, rewards, held-out evaluation, a base model)."""

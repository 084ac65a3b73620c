"""The static leaderboard: HTML pages and Markdown tables built from the scores, with plots."""

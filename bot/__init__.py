"""Chat frontends (Discord, Telegram). No torch import here."""

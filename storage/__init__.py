"""Durable state shared by the chat frontends and the engine workers."""

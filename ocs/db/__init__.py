"""The PostgreSQL schema: its migrations and the code that applies them."""

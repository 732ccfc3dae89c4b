"""Pieces shared by the extensions: bot options, personas, streaming, text splitting, lesson cards."""

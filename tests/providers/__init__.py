"""Provider tests: each built-in provider driven through its real SDK against its cloud simulator."""

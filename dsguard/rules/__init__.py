"""The policy rules, one module per rule, each with the same signature (see `Rule`), and the
engine (`engine.mutate`, `engine.judge`) that the webhook, `dsguard check`, the audit and
`dsguard status` compose. Pure: no I/O."""

"""Pictures: each a function that writes one PNG atomically, with matplotlib's object API
(``Figure``), which renders without pyplot's global state or a chosen backend."""

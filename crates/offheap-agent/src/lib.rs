//! The native agent. OWNER: the native-agent work.

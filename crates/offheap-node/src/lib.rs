//! What is specific to Node.js: the JS agent injected with `--require`,
//! the inspector (CDP) client used by `attach` and `snapshot`, and the
//! streaming `.heapsnapshot` analyser.

/// The JS agent, embedded in the binary and written into each recording.
pub const JS_AGENT: &str = include_str!("agent.js");

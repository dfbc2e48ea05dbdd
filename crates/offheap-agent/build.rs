//! Gives the agent a SONAME (tools such as valgrind treat SONAME-less
//! objects specially) and binds every symbol at load time, so no lazy PLT
//! resolution (which may take the loader lock) happens inside a hook.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,liboffheap_agent.so");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,now");
}

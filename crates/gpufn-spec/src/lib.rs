//! The function spec: what a user writes in `gpufn.yaml`, and the validated type the platform runs.
//!
//! Parsing and validation are separate steps on purpose (the firecracker habit): [`RawSpec`] mirrors
//! the document field for field (unknown fields are errors), and [`FunctionSpec`] is the only type the
//! rest of gpufn accepts. A `FunctionSpec` can only be built by [`RawSpec::validate`], so every rule
//! below holds wherever one is found.

mod raw;
mod strict;
mod validate;

pub use raw::{
    RawAsync, RawAuth, RawGpu, RawHealthCheck, RawHook, RawLifecycle, RawRegistryAuth, RawScaling,
    RawSchedule, RawSpec,
};
pub use validate::{
    AsyncConfig, ContainerSpec, FieldError, FunctionSpec, GpuRequest, HealthCheck, Hook,
    HookAction, KeepAliveMode, Lifecycle, RegistryAuth, Runtime, Scaling, ScheduleSpec, SpecError,
    TriggerAuth, check_http_url, is_secret_name, parse_json, parse_yaml,
};

/// Entry point for the `spec` fuzz target and its corpus regression test: a document in either
/// format, read and validated; a spec that validates must validate again from its own `to_raw`.
/// Any outcome but a panic. Not an API.
#[doc(hidden)]
pub fn fuzz_document(bytes: &[u8]) {
    let mut parsed = vec![parse_json(bytes)];
    if let Ok(text) = std::str::from_utf8(bytes) {
        parsed.push(parse_yaml(text));
    }
    for raw in parsed.into_iter().flatten() {
        if let Ok(spec) = raw.validate() {
            let again = spec.to_raw().validate();
            assert!(
                again.is_ok(),
                "a valid spec's own document is refused: {again:?}"
            );
        }
    }
}

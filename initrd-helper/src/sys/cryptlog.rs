//! libcryptsetup's (and, through it, libdevmapper's) log messages go
//! through our logger instead of straight to stderr: at debug level (shown
//! with `initrd_helper.debug`), since the helper's own error line already
//! names the cause. Without this, `plan` printed libdevmapper's "Cannot
//! initialize device-mapper" on a host without device-mapper.
//! This module is the FFI boundary for the C callback.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_int, c_void, CStr};

/// libcryptsetup's CRYPT_LOG_ERROR; others are normal, verbose or debug.
const CRYPT_LOG_ERROR: c_int = 1;

unsafe extern "C" fn callback(level: c_int, msg: *const c_char, _usr: *mut c_void) {
    if msg.is_null() {
        return;
    }
    // SAFETY: libcryptsetup passes a NUL-terminated string that lives for
    // the duration of the call; it is copied before returning.
    let text = unsafe { CStr::from_ptr(msg) }.to_string_lossy();
    let text = text.trim_end();
    if level == CRYPT_LOG_ERROR {
        log::debug!(target: "libcryptsetup", "libcryptsetup error: {text}");
    } else {
        log::debug!(target: "libcryptsetup", "libcryptsetup: {text}");
    }
}

/// Installs the callback process-wide (call once, before any libcryptsetup use).
pub fn route_to_logger() {
    libcryptsetup_rs::set_log_callback::<()>(Some(callback), None);
}

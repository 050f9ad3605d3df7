//! initrd-helper as a library: every module the binary (`main.rs`) runs,
//! so the fuzz targets (`initrd-helper/fuzz/`) reach the same parsers and
//! the planner. Nothing here has side effects until `sys` is called.

pub mod apply;
pub mod b64;
#[cfg(test)]
mod bad_input;
#[cfg(test)]
mod bad_luks;
pub mod cmdline;
pub mod config;
pub mod data;
pub mod dps;
pub mod env;
pub mod ext4;
pub mod facts;
pub mod fuzzing;
pub mod gpt;
pub mod gpt_grow;
pub mod guid;
pub mod hex;
pub mod identity;
pub mod init;
pub mod inputs;
pub mod log;
pub mod luks_hdr;
pub mod machine_id;
pub mod mountinfo;
pub mod pcrsig;
pub mod pid1;
pub mod plan;
pub mod policy;
pub mod provision;
pub mod recover;
pub mod recovery;
pub mod reset;
pub mod reset_request;
pub mod skeleton;
pub mod status;
pub mod sys;
pub mod token;
pub mod verity;
pub mod verity_sb;

//! Rust types for the NRI API and ttrpc's wire messages, from the .proto
//! files in proto/ (compiled by protox: no protoc needed).

fn main() {
    let files = ["proto/nri.proto", "proto/ttrpc.proto"];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let descriptors = protox::compile(files, ["proto"]).expect("proto/*.proto compile");
    prost_build::Config::new().compile_fds(descriptors).expect("generating Rust for proto/*.proto");
}

//! Compiles the contract with protox (a Rust protobuf compiler): no system protoc needed.
//!
//! Two things are generated from the contract itself rather than kept by hand, because a list
//! kept by hand is the one someone forgets to update:
//! - a masking `Debug` for every message with a field named `hetu` or ending `_hetu`
//!   (`proto_debug.rs`, included by src/proto_debug.rs);
//! - the exact paths of every RPC silta serves (`served_methods.rs`), the only paths a span
//!   may record.

use std::fmt::Write as _;
use std::path::PathBuf;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};

const PROTOS: &[&str] = &[
    "silta/v1/audit.proto",
    "silta/v1/common.proto",
    "silta/v1/landlord.proto",
    "silta/v1/social_services.proto",
];

type BuildResult<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> BuildResult<()> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let fds = protox::compile(PROTOS, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("silta_descriptor.bin"), fds.encode_to_vec())?;
    // The error detail types every error carries (google.rpc.BadRequest, ErrorInfo, ...), for
    // reflection only (their Rust types come from tonic-types), so that grpcurl can print
    // them. Files the contract's set already holds (the well-known types) are left out.
    let rpc = protox::compile(
        ["google/rpc/error_details.proto", "google/rpc/status.proto"],
        [&root],
    )?;
    let known: Vec<&str> = fds.file.iter().map(|f| f.name()).collect();
    let rpc = FileDescriptorSet {
        file: rpc
            .file
            .into_iter()
            .filter(|f| !known.contains(&f.name()))
            .collect(),
    };
    std::fs::write(out.join("google_rpc_descriptor.bin"), rpc.encode_to_vec())?;
    let masked = masked_messages(&fds)?;
    std::fs::write(out.join("proto_debug.rs"), masking_debug(&masked)?)?;
    std::fs::write(out.join("served_methods.rs"), served_methods(&fds))?;
    let holds_hetu: Vec<String> = masked.iter().map(|m| m.full_name.clone()).collect();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Messages holding an identity code get the generated masking Debug, so a stray `{:?}`
        // cannot log the code.
        .skip_debug(holds_hetu)
        // A request that does not decode is the caller's to fix: INVALID_ARGUMENT naming the
        // field (src/codec.rs), not tonic-prost's INTERNAL.
        .codec_path("crate::codec::SiltaCodec")
        .compile_fds(fds)?;
    Ok(())
}

/// Whether a field carries an identity code, by the contract's naming rule (common.proto).
fn holds_hetu(name: &str) -> bool {
    name == "hetu" || name.ends_with("_hetu")
}

/// A message that gets a masking `Debug`: its full protobuf name, its Rust path under
/// `crate::proto`, and its fields as prost generates them.
struct Masked {
    full_name: String,
    rust_path: String,
    fields: Vec<(String, Shown)>,
}

/// How a field of a masked message is shown.
enum Shown {
    /// As prost's own Debug of the field would.
    Plain,
    /// An identity code: a mask when set, so an empty field still reads as empty.
    Masked,
    /// Free text: its length only.
    Length,
}

fn masked_messages(fds: &FileDescriptorSet) -> BuildResult<Vec<Masked>> {
    let mut found = Vec::new();
    for file in &fds.file {
        let package = file.package();
        for message in &file.message_type {
            collect(message, &format!(".{package}"), "", &mut found)?;
        }
    }
    Ok(found)
}

/// Visits `message` and its nested messages (prost puts those in a snake-case module named
/// after the parent).
fn collect(
    message: &DescriptorProto,
    proto_scope: &str,
    rust_scope: &str,
    found: &mut Vec<Masked>,
) -> BuildResult<()> {
    let name = message.name();
    let full_name = format!("{proto_scope}.{name}");
    let rust_path = format!("{rust_scope}{name}");
    if message.field.iter().any(|f| holds_hetu(f.name())) {
        let mut fields: Vec<(String, Shown)> = Vec::new();
        for field in &message.field {
            let in_oneof = field.oneof_index.is_some() && !field.proto3_optional();
            if holds_hetu(field.name()) {
                if in_oneof || field.r#type() != Type::String || field.label() == Label::Repeated {
                    return Err(format!(
                        "{full_name}.{}: an identity-code field must be a plain string for the \
                         generated masking Debug; extend build.rs",
                        field.name()
                    )
                    .into());
                }
                fields.push((field.name().to_owned(), Shown::Masked));
            } else if in_oneof {
                // prost generates one Rust field per oneof, named after it.
                let index = usize::try_from(field.oneof_index()).map_err(|e| e.to_string())?;
                let oneof = message.oneof_decl[index].name().to_owned();
                if !fields.iter().any(|(n, _)| *n == oneof) {
                    fields.push((oneof, Shown::Plain));
                }
            } else if field.name().starts_with("free_text") && field.r#type() == Type::String {
                fields.push((field.name().to_owned(), Shown::Length));
            } else {
                fields.push((field.name().to_owned(), Shown::Plain));
            }
        }
        found.push(Masked {
            full_name: full_name.clone(),
            rust_path: rust_path.clone(),
            fields,
        });
    }
    let module = snake(name);
    for nested in &message.nested_type {
        if nested.options.as_ref().is_some_and(|o| o.map_entry()) {
            continue;
        }
        collect(
            nested,
            &full_name,
            &format!("{rust_scope}{module}::"),
            found,
        )?;
    }
    Ok(())
}

/// prost's module name for a message: `SubjectPurpose` → `subject_purpose`.
fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// A field name as a Rust identifier (prost escapes keywords the same way).
fn ident(name: &str) -> String {
    const KEYWORDS: &[&str] = &[
        "as", "async", "await", "break", "const", "continue", "dyn", "else", "enum", "extern",
        "fn", "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub",
        "ref", "return", "static", "struct", "trait", "type", "unsafe", "use", "where", "while",
    ];
    if KEYWORDS.contains(&name) {
        format!("r#{name}")
    } else {
        name.to_owned()
    }
}

fn masking_debug(masked: &[Masked]) -> BuildResult<String> {
    let mut code = String::from("// Generated by build.rs from the contract: do not edit.\n\n");
    writeln!(
        code,
        "/// Every message with an identity-code field, by full protobuf name.\n\
         #[cfg(test)]\n\
         pub(crate) const MASKED_MESSAGES: &[&str] = &{:?};\n",
        masked
            .iter()
            .map(|m| m.full_name.as_str())
            .collect::<Vec<_>>()
    )?;
    for m in masked {
        let short = m.rust_path.rsplit("::").next().unwrap_or(&m.rust_path);
        writeln!(
            code,
            "impl ::std::fmt::Debug for crate::proto::{} {{\n    \
             fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {{\n        \
             f.debug_struct({short:?})",
            m.rust_path
        )?;
        for (name, shown) in &m.fields {
            let field = ident(name);
            match shown {
                Shown::Plain => writeln!(code, "            .field({name:?}, &self.{field})")?,
                Shown::Masked => {
                    writeln!(code, "            .field({name:?}, &mask(&self.{field}))")?
                }
                Shown::Length => writeln!(
                    code,
                    "            .field({name:?}, &format_args!(\"<{{}} chars>\", \
                     self.{field}.chars().count()))"
                )?,
            }
        }
        code.push_str("            .finish()\n    }\n}\n\n");
    }
    Ok(code)
}

fn served_methods(fds: &FileDescriptorSet) -> String {
    let mut paths = Vec::new();
    for file in &fds.file {
        for service in &file.service {
            for method in &service.method {
                paths.push(format!(
                    "/{}.{}/{}",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    let mut code = String::from(
        "// Generated by build.rs from the contract: do not edit.\n\n\
         /// The path of each `silta.v1` RPC.\n",
    );
    code.push_str("pub const SILTA_METHODS: &[&str] = &[\n");
    for p in &paths {
        code.push_str(&format!("    {p:?},\n"));
    }
    code.push_str("];\n");
    code
}

//! The console's style sheet and script, compiled into the binary and
//! served under names that carry their content's hash: a browser keeps them
//! a year (`immutable`), and an upgrade changes the name.

use std::sync::LazyLock;

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

pub struct Asset {
    /// `/assets/<name>`.
    pub path: String,
    content_type: &'static str,
    etag: String,
    body: &'static str,
}

impl Asset {
    fn new(stem: &str, extension: &str, content_type: &'static str, body: &'static str) -> Asset {
        let digest = Sha256::digest(body.as_bytes());
        let hash: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        Asset {
            path: format!("/assets/{stem}-{hash}.{extension}"),
            content_type,
            etag: format!("\"{hash}\""),
            body,
        }
    }

    /// Its size in bytes.
    pub fn size(&self) -> usize {
        self.body.len()
    }
}

pub static CSS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "console",
        "css",
        "text/css; charset=utf-8",
        include_str!("../../console/console.css"),
    )
});

pub static JS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "console",
        "js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/console.js"),
    )
});

/// `GET /assets/{name}`: an asset by its hashed name, or 404.
pub async fn serve(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let path = format!("/assets/{name}");
    let Some(asset) = [&*CSS, &*JS].into_iter().find(|a| a.path == path) else {
        return crate::problem::Problem::new(StatusCode::NOT_FOUND)
            .with_detail(format!("there is no asset {path}"))
            .into_response();
    };
    let cache = [
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=31536000, immutable"),
        ),
        (
            header::ETAG,
            HeaderValue::from_str(&asset.etag).expect("a quoted hex hash"),
        ),
    ];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == asset.etag.as_bytes());
    if fresh {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        )],
        asset.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asset_names_carry_their_content_hash() {
        assert!(CSS.path.starts_with("/assets/console-") && CSS.path.ends_with(".css"));
        assert!(JS.path.ends_with(".js"));
        assert_ne!(CSS.path, JS.path);
        assert!(CSS.size() > 0 && JS.size() > 0);
    }
}

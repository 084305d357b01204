//! Bodies are streamed frame by frame, never buffered whole: the request body weir sends
//! upstream, and the response body it sends the client.

mod progress;
mod request;
mod response;

pub(crate) use progress::{Progress, Stage};
pub(crate) use request::{Copy, RequestBody};
pub(crate) use response::ResponseBody;

/// What polling a body for its next frame gives.
type Polled = std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>>;

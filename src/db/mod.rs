//! The users store (placeholder; see the users issue).

pub mod cli;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DbError(pub String);

#[derive(Clone)]
pub struct Db;

impl Db {
    pub async fn connect(_url: &str, _migrate: bool) -> Result<Self, DbError> {
        Ok(Db)
    }
    pub async fn ping(&self) -> bool {
        true
    }
    pub fn record_pool_metrics(&self) {}
    pub async fn close(&self) {}
}

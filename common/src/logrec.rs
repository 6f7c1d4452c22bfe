//! pen's request records (logging.md §1.3, §1.4): the UDP record sent to penlogd and the
//! local file line read by mergelogs.

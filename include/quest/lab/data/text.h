// A byte-level text corpus from a directory of (gzipped) text files: by default the Linux kernel
// documentation that Debian's linux-doc package ships as reStructuredText (linux-doc-6.1 on
// Debian 12: 3191 files, ~24 MB; Debian 13 ships a newer kernel's: prose about software, written
// by many authors; no download). Vocabulary: the 256 byte
// values, byte 0 marking the end of a document. Split by document, deterministically.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace quest::data {

// Where Debian's linux-doc-<version> puts the documentation's .rst sources (gzipped): the newest
// /usr/share/doc/linux-doc-*/Documentation installed, else Debian 12's path (which does not exist).
std::string linux_doc_dir();
// The package that brings it (a metapackage of the distribution's kernel documentation).
inline const char* kLinuxDocPackage = "linux-doc";

// Ends each document in a byte stream (text files hold no NUL: those with one are skipped).
constexpr uint8_t kDocumentEnd = 0;

struct TextCorpusOptions {
  std::string dir = linux_doc_dir();
  // File names ending in one of these are read (".gz" ones through zlib).
  std::vector<std::string> extensions = {".rst", ".rst.gz"};
  // Stop after this many cleaned bytes (0: read everything): small corpora for tests.
  int64_t max_bytes = 0;
};

struct TextDocument {
  std::string name;  // path relative to the corpus directory
  std::string text;  // cleaned
};

struct TextCorpus {
  std::vector<TextDocument> documents;  // sorted by name
  int64_t files_read = 0;
  int64_t skipped_empty = 0;   // nothing left after cleaning
  int64_t skipped_binary = 0;  // a NUL byte, or > 1 % control bytes
  int64_t bytes() const;
};

// Reads every matching file under options.dir (recursively, in name order), cleans it and keeps
// the text ones. A missing directory raises an error that names the package to install when it
// is the default one; an unreadable or corrupt file raises an error naming it.
TextCorpus read_text_corpus(const TextCorpusOptions& options = {});

// reStructuredText to the prose it holds: drops carriage returns, section adornment lines (a
// single punctuation character repeated), explicit-markup lines (".. " directives, comments,
// SPDX tags) and runs of more than one blank line.
std::string clean_rst(std::string_view text);

enum class TextSplit { train, valid, test };
// 90 / 5 / 5 by a hash (FNV-1a) of the document's name: stable when files are added or removed.
TextSplit split_of(std::string_view name);

struct ByteSplits {
  torch::Tensor train, valid, test;  // (N) uint8: documents of the split, each ended by kDocumentEnd
};
ByteSplits byte_splits(const TextCorpus& corpus);

}  // namespace quest::data

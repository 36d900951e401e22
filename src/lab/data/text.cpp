#include "quest/lab/data/text.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>

#include "gz_file.h"

namespace quest::data {
namespace fs = std::filesystem;

namespace {

constexpr size_t kMaxDocumentBytes = size_t(64) << 20;

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// A NUL byte, or more than 1 % control bytes other than tab, newline, form feed.
bool looks_binary(std::string_view text) {
  if (text.find('\0') != std::string_view::npos) return true;
  size_t control = 0;
  for (unsigned char c : text)
    if ((c < 32 && c != '\t' && c != '\n' && c != '\f') || c == 127) ++control;
  return control * 100 > text.size();
}

// "=====", "-----", "~~~~": one punctuation character repeated, at least 3 times.
bool is_adornment(std::string_view line) {
  while (!line.empty() && (line.back() == ' ' || line.back() == '\t')) line.remove_suffix(1);
  if (line.size() < 3 || !std::ispunct(static_cast<unsigned char>(line[0]))) return false;
  return std::all_of(line.begin(), line.end(), [&](char c) { return c == line[0]; });
}

}  // namespace

int64_t TextCorpus::bytes() const {
  int64_t n = 0;
  for (const TextDocument& d : documents) n += static_cast<int64_t>(d.text.size());
  return n;
}

std::string clean_rst(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  int blank_run = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (is_adornment(line) || line.substr(0, 3) == ".. " || line == "..") continue;
    const bool blank = line.find_first_not_of(" \t") == std::string_view::npos;
    blank_run = blank ? blank_run + 1 : 0;
    if (blank_run > 1 || (blank && out.empty())) continue;
    out.append(blank ? std::string_view() : line);
    out.push_back('\n');
  }
  while (!out.empty() && (out.back() == '\n')) out.pop_back();
  if (!out.empty()) out.push_back('\n');
  return out;
}

std::string linux_doc_dir() {
  std::error_code ec;
  std::string newest;
  // linux-doc-6.1 < linux-doc-6.12: versions compared number by number.
  auto version = [](const std::string& name) {
    std::vector<int> parts;
    for (size_t i = name.find_first_of("0123456789"); i < name.size();) {
      size_t end = i;
      parts.push_back(std::stoi(name.substr(i), &end));
      i = name.find_first_of("0123456789", i + end);
    }
    return parts;
  };
  for (fs::directory_iterator it("/usr/share/doc", ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind("linux-doc-", 0) != 0 || name.size() == 10 ||
        !fs::is_directory(it->path() / "Documentation", ec))
      continue;
    if (newest.empty() || version(name) > version(newest)) newest = name;
  }
  return "/usr/share/doc/" + (newest.empty() ? std::string("linux-doc-6.1") : newest) + "/Documentation";
}

TextCorpus read_text_corpus(const TextCorpusOptions& o) {
  std::error_code ec;
  if (!fs::is_directory(o.dir, ec)) {
    TORCH_CHECK(o.dir != linux_doc_dir(), "quest::data: the text corpus directory '", o.dir,
                "' is missing: install Debian's ", kLinuxDocPackage, " package (scripts/setup.sh "
                "does)");
    TORCH_CHECK(false, "quest::data: the text corpus directory '", o.dir, "' does not exist");
  }
  std::vector<fs::path> files;
  for (fs::recursive_directory_iterator it(o.dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (!it->is_regular_file(ec)) continue;
    const std::string name = it->path().filename().string();
    if (std::any_of(o.extensions.begin(), o.extensions.end(),
                    [&](const std::string& x) { return ends_with(name, x); }))
      files.push_back(it->path());
  }
  TORCH_CHECK(!ec, "quest::data: cannot list '", o.dir, "': ", ec.message());
  std::sort(files.begin(), files.end());

  TextCorpus corpus;
  int64_t bytes = 0;
  for (const fs::path& path : files) {
    if (o.max_bytes > 0 && bytes >= o.max_bytes) break;
    GzFile file(path.string());
    const std::string raw = file.read_all(kMaxDocumentBytes);
    ++corpus.files_read;
    if (looks_binary(raw)) {
      ++corpus.skipped_binary;
      continue;
    }
    std::string text = clean_rst(raw);
    if (text.empty()) {
      ++corpus.skipped_empty;
      continue;
    }
    bytes += static_cast<int64_t>(text.size());
    corpus.documents.push_back({fs::relative(path, o.dir).string(), std::move(text)});
  }
  TORCH_CHECK(!corpus.documents.empty(), "quest::data: no text documents under '", o.dir, "' (",
              corpus.files_read, " files read, ", corpus.skipped_empty, " empty, ",
              corpus.skipped_binary, " binary)");
  return corpus;
}

TextSplit split_of(std::string_view name) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a, 64 bit
  for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
  const uint64_t bucket = h % 100;
  return bucket < 5 ? TextSplit::test : bucket < 10 ? TextSplit::valid : TextSplit::train;
}

ByteSplits byte_splits(const TextCorpus& corpus) {
  std::string parts[3];
  for (const TextDocument& d : corpus.documents) {
    std::string& out = parts[static_cast<int>(split_of(d.name))];
    out += d.text;
    out.push_back(static_cast<char>(kDocumentEnd));
  }
  auto tensor = [](const std::string& bytes) {
    torch::Tensor t = torch::empty({static_cast<int64_t>(bytes.size())}, torch::kUInt8);
    if (!bytes.empty()) std::memcpy(t.data_ptr<uint8_t>(), bytes.data(), bytes.size());
    return t;
  };
  return {tensor(parts[0]), tensor(parts[1]), tensor(parts[2])};
}

}  // namespace quest::data

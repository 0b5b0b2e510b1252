// A thin wall around libsentencepiece. Its header declares `namespace absl { using
// std::string_view; }`, which clashes with this build's abseil (absl::string_view is its own
// class here), so only spm_model.cc includes it and this interface uses no absl types.
#pragma once

#include <memory>
#include <string>
#include <vector>

namespace fluxserve::text {

class SpmModel {
 public:
  // nullptr with *error set when the file cannot be read or is not a SentencePiece model.
  static std::unique_ptr<SpmModel> load(const std::string& path, std::string* error);
  ~SpmModel();

  // Ids of `text` (normalised by the model's own rules). False with *error on failure.
  bool encode(const std::string& text, std::vector<int>* ids, std::string* error) const;
  std::string decode(const std::vector<int>& ids) const;
  int piece_size() const;
  int piece_to_id(const std::string& piece) const;  // the unk id when absent
  std::string id_to_piece(int id) const;
  int unk_id() const;
  bool is_unknown(int id) const;

 private:
  SpmModel();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fluxserve::text

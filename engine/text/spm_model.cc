#include "engine/text/spm_model.h"

#include <sentencepiece_processor.h>

namespace fluxserve::text {

struct SpmModel::Impl {
  sentencepiece::SentencePieceProcessor sp;
};

SpmModel::SpmModel() : impl_(std::make_unique<Impl>()) {}
SpmModel::~SpmModel() = default;

std::unique_ptr<SpmModel> SpmModel::load(const std::string& path, std::string* error) {
  std::unique_ptr<SpmModel> m(new SpmModel());
  const auto status = m->impl_->sp.Load(path);
  if (!status.ok()) {
    *error = status.ToString();
    return nullptr;
  }
  return m;
}

bool SpmModel::encode(const std::string& text, std::vector<int>* ids, std::string* error) const {
  const auto status = impl_->sp.Encode(text, ids);
  if (!status.ok()) {
    *error = status.ToString();
    return false;
  }
  return true;
}

std::string SpmModel::decode(const std::vector<int>& ids) const {
  std::string out;
  if (!impl_->sp.Decode(ids, &out).ok()) return {};
  return out;
}

int SpmModel::piece_size() const { return impl_->sp.GetPieceSize(); }
int SpmModel::piece_to_id(const std::string& piece) const { return impl_->sp.PieceToId(piece); }
std::string SpmModel::id_to_piece(int id) const { return impl_->sp.IdToPiece(id); }
int SpmModel::unk_id() const { return impl_->sp.unk_id(); }
bool SpmModel::is_unknown(int id) const { return impl_->sp.IsUnknown(id); }

}  // namespace fluxserve::text

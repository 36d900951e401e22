// The task kinds quest ships (registered by task_kind.cpp before the first lookup).
#pragma once

#include <memory>

#include "quest/lab/tasks/task_kind.h"

namespace quest::tasks {

std::shared_ptr<const TaskKind> vit_task_kind();  // vit.cpp: ViT image classification
std::shared_ptr<const TaskKind> lm_task_kind();   // lm.cpp: the byte-level GPT
std::shared_ptr<const TaskKind> retrieval_task_kind();  // retrieval.cpp: the spurious-pattern toy

}  // namespace quest::tasks

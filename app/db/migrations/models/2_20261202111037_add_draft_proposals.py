from tortoise import BaseDBAsyncClient

RUN_IN_TRANSACTION = True


async def upgrade(db: BaseDBAsyncClient) -> str:
    return """
        CREATE TABLE IF NOT EXISTS "draft_proposals" (
    "id" UUID NOT NULL PRIMARY KEY,
    "gmail_message_id" VARCHAR(128) NOT NULL,
    "gmail_thread_id" VARCHAR(128) NOT NULL,
    "recipient" VARCHAR(320) NOT NULL,
    "subject" VARCHAR(998) NOT NULL,
    "body" TEXT NOT NULL,
    "in_reply_to" VARCHAR(998) NOT NULL,
    "references_header" TEXT NOT NULL,
    "status" VARCHAR(16) NOT NULL,
    "gmail_draft_id" VARCHAR(128),
    "created_at" TIMESTAMPTZ NOT NULL,
    "decided_at" TIMESTAMPTZ,
    "conversation_id" UUID REFERENCES "conversations" ("id") ON DELETE SET NULL,
    "user_id" INT NOT NULL REFERENCES "users" ("id") ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS "idx_draft_proposals_user_status" ON "draft_proposals" ("user_id", "status", "created_at");
COMMENT ON COLUMN "draft_proposals"."status" IS 'PENDING: pending\nAPPROVED: approved\nREJECTED: rejected';"""


async def downgrade(db: BaseDBAsyncClient) -> str:
    return """
        DROP TABLE IF EXISTS "draft_proposals";"""


MODELS_STATE = (
    "eJztXG1zmzgQ/isePrUzuU7qOE6aubkZJ6Gt28TO2KTX6+WGkUG2uWKgQrTx5PLfTxJg3g"
    "QBYlxM+dLG0q4Qz65W+yLxIKxMFer2qwvT+A6RDbBmGsJZ50EwwAqSP7j9Bx0BWFbQSxsw"
    "mOmMQQlRsh4wszECCiadc6DbkDSp0FaQZnkPMxxdp42mQgg1YxE0OYb2zYEyNhcQLyEiHX"
    "//Q5o1Q4X30KY/H4S5BnWV/S04NkSyptKHOpYKMFRlgAXKAe8tBG2bTckbxH9BTb2XI3OW"
    "2TAIKtDA7M3WFiMU2DjkVdiPRzqG9VVmj48g5k6Atcs+7+3t8PIto6QvOiMP1J2VEVBba7"
    "w0jQ2542jqK8pD+xbQgIi+TAhAio8HuN/kYkUaMHLgBiQ1aFDhHDg6FYPw+9wxFPqyHfYk"
    "+k/vD29qITJZHo0leSpKsiwUkBpBk0pcMzAF++HRHTcAhLUK9AEX7weTF0f9lwwC08YLxD"
    "oZXMIjYwQYyIGIA5SxhsnrJ4C+WALEB3rDEMOaTLUMyn5DAHOg3BsAq4JUWIF7WYfGAi/J"
    "z+7xcQbGnwYTBjOhYjibZC26K3XkdXXdPop3gC9YeOqfF98Nww7xdQfVdwNzv5cD5X4vFW"
    "TaFcVYQdA3UgmgL0kP1laQD3aUM4a46rG+8v+oCn8fyCqgJy+ojg197dmvDOil4bU4lQbX"
    "N/RxK9v+pjP8BpJIe7qsdR1rfdGPiWkzSOfPofS+Q392voxHYtwybeikLwKdE3CwKRvmDx"
    "moIVPrt/qoRaQe2poKSj3K2Uq9LlL3MQqJ3Zt9SOqBbxIV+dDAKdIOOGKi1lxDu2/CXdBJ"
    "/NZ93TvpnR71e6eEhE1003KSIe/hSCLWkzpd869ch4DClUT3rYmgtjA+wjUDeUhmBAyF5w"
    "d4ju6tN8yegfvoa4/fGhgjBH5svNSwUpF3J28MsbuvD6YXg0vRdWtnQPn6AyBVToF6RVxp"
    "st3bSbjPPc63HydQ3wQLfKSv3VEaBDYDz+yaIdAicCa7Vt1VvAUYBBTVezZ9kgfXJQJzfI"
    "NMYpeALnBCtCjBQVaMplJS2fJof16URhYjdtjjQw5NjngtNn83YgsGayO2OkZsixXQdNmz"
    "HdytMD244PHuLs6oclOMhBivu6c5YgxClRpksL5olOFih5fUtyoFe4S1cdFzJZgjqGiWVj"
    "CCjjA1ULuPuoc5kCZUqUizvijStjP7FyqFcA6xNE6b37zJo82EKhVj1hfFeGaq6yTAEtla"
    "+QD79I3Q4awYVPwsRcJPH8UX14PPLyMh6NV49M4nD6F+cTU+j4GtGTKClr4m/lQRpY6xtY"
    "qdR7ERnEMESTxoy0uyxfECyHQt5zI3APddK3zgtyd1XTScVSJwjxrzDfcOobegoVIIi0lA"
    "uBFHl8PRu7OOx39nDG5uJuNP4uVZhwRryPwO1TtjIn4QLyTahiDdp6CrekXdmn4eryaeEA"
    "s5NX2+H+mGXmXcyDBnKVl5UVFdNoYduJFtgSAd/f1MFecpEKgkDlBLST3KuQWp12zJ7YmQ"
    "OfWApJTDZw649jQ9A8VhfUY6an9k/GTyqS23tOWW/Sq3pFmELUAbP7K1l2bgSYQ5tjCCNJ"
    "lHZ3R7dZVV2aqybONXuTgFm1ABLL1UE6617a5Gw0G1WIXGn3bkaJ3sjbGtGs25tkg153kt"
    "uadTzyvPVG/G33S7R0cn3cOj/ulx7+Tk+PRwY8+TXVmG/Xz4jtr2iNvjGvuDjNoNMtMO2z"
    "0dofu8dc4GCrdTcXLWoeaaBOXT6ZB4dyOJROVEw+lr4TtDGo+viOhNU78zpn9NJfH6rGOv"
    "bQxX9QjPyeMwt+CQnsEKsbR5q8J5K6oKsgJ0nZO7+jAdj1KOoUa44iGapuDOfx2d6Nze7t"
    "g8/Ckc2fjHoY55+HSAVPwLZqPifM3LRVVyIHgP07SKubKYH1hwM7gYX99ciZJ41vFHuDOS"
    "uVtxMhmTPQMiZKKabAFtuvAXTBfu+KR+rS1fBWf065Kmq9uKKp+ny8gq/dwUSE0hfnYOJM"
    "fh3ipTIBM4JwqwlMyvkHu3MNJ/kJUMQS6ljClp9SmRQsmIXyUT8ayE8kFGjmEOVpq+Lmhj"
    "I0zVWtddYr2dIghbJvIS2Mti8VGYazvu+s9V3IpdBHhvaUQIJdzuKGcD3e49cbNzFWwdu9"
    "ylPbstyO+FfBH8TixfGRFHOVsp11nKbY4kfZ9sbo6EHo0GChHejO9gpjrvScZSh0NqtqC3"
    "48q3p23a0za1yoMUOm0TWtlbQDaew9gve5AX4KQ1rNVZG6benASTr/bpiSWqOW0+qVn5JE"
    "hvHRRJfGwYGpfzqOTmJfu/ALw+fQOOmuyg3G5pCnZQIYBDLM3D+LCX534NJUtHmXXGLjWZ"
    "5kKHsu3MiiAd5dpKGbVG1qISffYgA4oCbdst4MjQUJKopx9XyxiiCZXsXZ9f8+CM1NRKio"
    "Q7RiuT0jLxcCxdV8gYps1O1jk76W8simnxPq/15EIMGBvgAex68bWp4XQHobmp4fZznE2T"
    "OsfSJj7HqQMby7q50IwSgk8wt5tqfUTtrvBELj09I8k/ffjMj1s29ORh9DsFya9Ilgcs8f"
    "XKJiKWPL9YHrCCFYe9wavKAsEAIk1ZCpwSgddzkFUkAAFNWyXYmQ9ScZWAWmnuYfP07F+I"
    "pc53WuuU/aOLqgDCHnkD0X19mKcSQ6jSr30dJioxqVd/06+hpl/9LXYHtW5o7+ISagHfcv"
    "ub2eP/olvvnA=="
)
